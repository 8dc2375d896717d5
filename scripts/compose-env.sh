#!/usr/bin/env bash
# Write .env from .env.example with a fresh random password on every *_PASSWORD line.
# Refuses to overwrite an existing .env (it holds the passwords the broker already knows).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -e .env ]; then
  echo "broker-net: .env exists; not overwriting it (delete it first to start afresh)." >&2
  exit 1
fi
umask 077
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    [A-Z]*_PASSWORD=*) echo "${line%%=*}=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')" ;;
    *) echo "$line" ;;
  esac
done < .env.example > .env
echo "broker-net: wrote .env (readable by you only) with fresh passwords." >&2
