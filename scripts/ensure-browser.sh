#!/usr/bin/env bash
# Make sure Debian's headless browser and its driver are installed, for the dashboard tests:
# /usr/bin/chromium and /usr/bin/chromedriver (packages chromium, chromium-driver).
# Installs them with apt-get when missing. Exit code 0: both are there and start.
set -u
QUIET="${1:-}"
CHROMIUM="${BROKER_NET_TEST_CHROMIUM:-/usr/bin/chromium}"
DRIVER="${BROKER_NET_TEST_CHROMEDRIVER:-/usr/bin/chromedriver}"

say() { [ "$QUIET" = "--quiet" ] || echo "$@" >&2; }
present() { [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ]; }

if ! present; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "broker-net: $CHROMIUM or $DRIVER is missing and there is no apt-get to install them."
    say "            Install chromium and its driver (Debian: chromium, chromium-driver)."
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
      say "broker-net: installing chromium needs root: run 'apt-get install chromium chromium-driver'."
      exit 1
    fi
  fi
  say "broker-net: installing chromium and chromium-driver (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  # Another install on this machine may hold the dpkg lock for a while: wait for it.
  $SUDO apt-get -o DPkg::Lock::Timeout=600 -qq update >/dev/null 2>&1 || true
  if ! $SUDO apt-get -o DPkg::Lock::Timeout=600 -qq install -y --no-install-recommends \
      chromium chromium-driver >/dev/null; then
    say "broker-net: 'apt-get install chromium chromium-driver' failed; the dashboard tests need them."
    exit 1
  fi
fi

if ! present; then
  say "broker-net: after installing, $CHROMIUM or $DRIVER is still missing."
  exit 1
fi
if ! "$DRIVER" --version >/dev/null 2>&1; then
  say "broker-net: $DRIVER does not start ($("$DRIVER" --version 2>&1 | head -1))."
  exit 1
fi
exit 0
