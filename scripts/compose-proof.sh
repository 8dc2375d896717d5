#!/usr/bin/env bash
# `make compose-proof`: the real docker-compose.yml, built and run in containers, checked end to
# end (docs/operations.md, "Proving the compose stack in containers").
#
#  1. installs what is missing (docker.io, docker-compose, debootstrap) and starts dockerd when
#     nothing answers, falling back from overlay2 to fuse-overlayfs, then vfs;
#  2. picks the images: rabbitmq:3.13-management, python:3.11-slim and curlimages/curl when
#     they are on this machine already, else local ones from Debian packages
#     (scripts/build-base-images.sh); it never pulls unless COMPOSE_PROOF_IMAGES=official;
#  3. downloads the Python dependencies as wheels into deploy/wheelhouse (the build installs
#     from them: containers need no package index);
#  4. brings docker-compose.yml up with deploy/compose-proof.yml as project `broker-net-proof`,
#     the broker published on two free 127.0.0.1 ports, never 5672 / 15672;
#  5. scripts/compose_proof.py checks the stack and kills and restarts a node mid-run;
#  6. on exit, success or not: `down --volumes`, the .env it wrote, and with
#     COMPOSE_PROOF_REMOVE_IMAGES=1 the images it built.
#
# Settings (environment): COMPOSE_PROOF_IMAGES=auto|local|official, COMPOSE_PROOF_ROUNDS (20),
# COMPOSE_PROOF_REMOVE_IMAGES (0), COMPOSE_PROOF_KEEP=1 leaves the stack running, COMPOSE (the
# compose command: `docker compose` when the plugin is there, else `docker-compose`).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=broker-net-proof
OVERRIDE=deploy/compose-proof.yml
WHEELHOUSE=deploy/wheelhouse
PYTHON="${PYTHON:-.venv/bin/python}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/broker-net-dockerd.log}"
LOCAL_PYTHON_IMAGE=broker-net-base/python:3.11-bookworm
LOCAL_RABBITMQ_IMAGE=broker-net-base/rabbitmq:bookworm-management
started=$(date +%s)

say() { echo "compose-proof: $*" >&2; }
fail() { say "error: $*"; exit 1; }
elapsed() { echo "$(($(date +%s) - started)) s"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@" || fail "needs root for: $*"; fi; }

# --- 1. tools and the docker daemon --------------------------------------------------------
missing=()
command -v docker > /dev/null || missing+=(docker.io)
command -v dockerd > /dev/null || missing+=(docker.io)
command -v debootstrap > /dev/null || missing+=(debootstrap)
if ! docker compose version > /dev/null 2>&1 && ! command -v docker-compose > /dev/null; then
  missing+=(docker-compose)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} with apt-get"
  as_root apt-get update -qq > /dev/null || fail "apt-get update failed"
  # shellcheck disable=SC2046
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    $(printf '%s\n' "${missing[@]}" | sort -u) > /dev/null || fail "apt-get install ${missing[*]} failed"
fi

if [ -z "${COMPOSE:-}" ]; then
  if docker compose version > /dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
export COMPOSE

wait_for_docker() {  # wait_for_docker SECONDS [PID]: docker answers (and dockerd PID lives)
  local deadline=$(($(date +%s) + $1))
  until docker info > /dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    [ -z "${2:-}" ] || kill -0 "$2" 2> /dev/null || return 1
    sleep 1
  done
}

if ! docker info > /dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "docker does not answer and only root can start dockerd here"
  pgrep -x dockerd > /dev/null && { wait_for_docker 60 || fail "dockerd runs but does not answer within 60 s (see its log)"; }
fi
if ! docker info > /dev/null 2>&1; then
  for driver in overlay2 fuse-overlayfs vfs; do
    [ "$driver" != fuse-overlayfs ] || command -v fuse-overlayfs > /dev/null || continue
    say "starting dockerd (storage driver $driver), log in $DOCKERD_LOG"
    # A session of its own: Ctrl-C on this script does not reach the daemon it leaves running.
    setsid dockerd --storage-driver="$driver" >> "$DOCKERD_LOG" 2>&1 < /dev/null &
    dockerd_pid=$!
    if wait_for_docker 60 "$dockerd_pid"; then break; fi
    kill "$dockerd_pid" 2> /dev/null || true
    wait "$dockerd_pid" 2> /dev/null || true
  done
  docker info > /dev/null 2>&1 || fail "dockerd did not start with overlay2, fuse-overlayfs or vfs (see $DOCKERD_LOG)"
fi
# Compose v1 waits for `condition: service_completed_successfully` from 1.29 on.
case "$($COMPOSE version --short 2> /dev/null || echo 0)" in
  1.2[0-8].* | 1.1[0-9].* | 1.[0-9].*) fail "$COMPOSE is older than 1.29: it cannot run docker-compose.yml (install docker-compose >= 1.29 or the compose plugin)" ;;
esac
say "docker $(docker version --format '{{.Server.Version}}'), storage driver $(docker info --format '{{.Driver}}'), compose: $COMPOSE ($($COMPOSE version --short 2> /dev/null || echo '?'))"

# --- 2. images -------------------------------------------------------------------------------
have() { docker image inspect "$1" > /dev/null 2>&1; }
images="${COMPOSE_PROOF_IMAGES:-auto}"
if [ "$images" = auto ]; then
  images=local
  have python:3.11-slim && have rabbitmq:3.13-management && have curlimages/curl:8.11.1 && images=official
fi
case "$images" in
  official)
    export COMPOSE_PROOF_PYTHON_IMAGE=python:3.11-slim
    export COMPOSE_PROOF_RABBITMQ_IMAGE=rabbitmq:3.13-management
    export COMPOSE_PROOF_CURL_IMAGE=curlimages/curl:8.11.1
    for image in "$COMPOSE_PROOF_PYTHON_IMAGE" "$COMPOSE_PROOF_RABBITMQ_IMAGE" "$COMPOSE_PROOF_CURL_IMAGE"; do
      have "$image" || timeout 600 docker pull -q "$image" > /dev/null || fail "cannot pull $image (COMPOSE_PROOF_IMAGES=local builds base images from Debian packages)"
    done
    ;;
  local)
    as_root env PYTHON_BASE_IMAGE="$LOCAL_PYTHON_IMAGE" RABBITMQ_BASE_IMAGE="$LOCAL_RABBITMQ_IMAGE" \
      timeout 1200 bash scripts/build-base-images.sh || fail "building the base images failed"
    export COMPOSE_PROOF_PYTHON_IMAGE="$LOCAL_PYTHON_IMAGE"
    export COMPOSE_PROOF_RABBITMQ_IMAGE="$LOCAL_RABBITMQ_IMAGE"
    export COMPOSE_PROOF_CURL_IMAGE="$LOCAL_PYTHON_IMAGE"
    ;;
  *) fail "COMPOSE_PROOF_IMAGES must be auto, local or official, not '$images'" ;;
esac
say "images ($images): $COMPOSE_PROOF_RABBITMQ_IMAGE; broker-net built on $COMPOSE_PROOF_PYTHON_IMAGE; provisioning on $COMPOSE_PROOF_CURL_IMAGE"

# --- 3. wheels for the image's Python ------------------------------------------------------
[ -x "$PYTHON" ] || fail "$PYTHON is missing: run make install first"
image_python="$(timeout 120 docker run --rm --entrypoint python "$COMPOSE_PROOF_PYTHON_IMAGE" \
  -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
  || fail "cannot run python in $COMPOSE_PROOF_PYTHON_IMAGE"
"$PYTHON" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
  > "$WHEELHOUSE.requirements.txt.tmp"
mkdir -p "$WHEELHOUSE"
say "wheels for Python $image_python into $WHEELHOUSE"
timeout 900 "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary :all: \
  --python-version "$image_python" --dest "$WHEELHOUSE" \
  -r "$WHEELHOUSE.requirements.txt.tmp" 'setuptools>=77' wheel 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
rm -f "$WHEELHOUSE.requirements.txt.tmp"
ls "$WHEELHOUSE"/numpy-*.whl > /dev/null 2>&1 || fail "pip download left no wheels in $WHEELHOUSE"
export COMPOSE_PROOF_WHEELHOUSE="$WHEELHOUSE"

# --- 4. the stack ----------------------------------------------------------------------------
wrote_env=false
if [ ! -e .env ]; then
  bash scripts/compose-env.sh
  wrote_env=true
else
  say "using the existing .env (its passwords serve this project's own throwaway broker)"
fi

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
RABBITMQ_AMQP_PORT="$(free_port)"
RABBITMQ_MANAGEMENT_PORT="$(free_port)"
for port in "$RABBITMQ_AMQP_PORT" "$RABBITMQ_MANAGEMENT_PORT"; do
  case "$port" in 5672 | 15672) fail "refusing port $port: this machine's own broker may use it" ;; esac
done
[ "$RABBITMQ_AMQP_PORT" != "$RABBITMQ_MANAGEMENT_PORT" ] || fail "the two free ports are one"
export RABBITMQ_AMQP_PORT RABBITMQ_MANAGEMENT_PORT
export COMPOSE_PROOF_ROUNDS="${COMPOSE_PROOF_ROUNDS:-20}"
export COMPOSE_PROJECT_NAME="$PROJECT"

checker=""
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  if [ -n "$checker" ] && kill -0 "$checker" 2> /dev/null; then
    kill "$checker" 2> /dev/null || true
    wait "$checker" 2> /dev/null || true
  fi
  if [ "${COMPOSE_PROOF_KEEP:-0}" = 1 ]; then
    say "COMPOSE_PROOF_KEEP=1: the stack stays up ($COMPOSE -p $PROJECT -f docker-compose.yml -f $OVERRIDE down -v removes it)"
  else
    say "cleaning up: containers, network and volumes of project $PROJECT"
    timeout 180 "${compose_argv[@]}" down --volumes --remove-orphans --timeout 10 > /dev/null 2>&1 \
      || say "warning: '$COMPOSE down' failed; see 'docker ps -a --filter label=com.docker.compose.project=$PROJECT'"
    $wrote_env && rm -f .env
    if [ "${COMPOSE_PROOF_REMOVE_IMAGES:-0}" = 1 ]; then
      say "removing the images it built"
      docker image rm broker-net:compose-proof > /dev/null 2>&1 || true
      [ "$images" != local ] || docker image rm "$LOCAL_PYTHON_IMAGE" "$LOCAL_RABBITMQ_IMAGE" > /dev/null 2>&1 || true
    fi
  fi
  say "$([ "$code" = 0 ] && echo passed || echo FAILED) after $(elapsed)"
  exit "$code"
}
read -r -a compose_argv <<< "$COMPOSE"
compose_argv+=(-p "$PROJECT" -f docker-compose.yml -f "$OVERRIDE")
trap cleanup EXIT
trap 'exit 130' INT TERM

# A run stopped before its cleanup may have left the project behind.
timeout 180 "${compose_argv[@]}" down --volumes --remove-orphans --timeout 10 > /dev/null 2>&1 || true

say "building broker-net:compose-proof ($(elapsed) so far)"
timeout 900 "${compose_argv[@]}" build > /tmp/broker-net-proof-build.log 2>&1 \
  || { tail -n 30 /tmp/broker-net-proof-build.log >&2; fail "the image build failed (log above)"; }

say "starting (broker on 127.0.0.1:$RABBITMQ_AMQP_PORT, management API on 127.0.0.1:$RABBITMQ_MANAGEMENT_PORT; $(elapsed) so far)"
# In the background, so that a signal to this script runs the cleanup at once.
timeout 1200 "$PYTHON" scripts/compose_proof.py --project "$PROJECT" --override "$OVERRIDE" &
checker=$!
code=0
wait "$checker" || code=$?
checker=""
[ "$code" != 124 ] || fail "the checks took more than 20 minutes"
exit "$code"
