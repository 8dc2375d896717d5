#!/usr/bin/env bash
# Build the two base images docker-compose.yml needs from Debian packages, for a machine that
# reaches Debian's package mirror but no container registry:
#
#   broker-net-base/python:3.11-bookworm      a minimal Debian root file system (debootstrap)
#                                            with python3 in a virtual environment on PATH
#                                            (python, pip) and curl: stands in for
#                                            python:3.11-slim and, for provisioning, for curl
#   broker-net-base/rabbitmq:bookworm-management   Debian's rabbitmq-server with the management
#                                            plugin, an entrypoint that honours
#                                            RABBITMQ_DEFAULT_USER/_PASS/_VHOST as the official
#                                            image does: stands in for rabbitmq:3.13-management
#
#   scripts/build-base-images.sh [--force]
#
# An image that exists already is kept unless --force. Needs root (debootstrap, chroot), docker
# and debootstrap. The apt mirror is the first one /etc/apt/sources.list(.d) names for the
# machine's Debian release (override with DEBIAN_MIRROR); root file systems and downloaded
# packages are kept under BASE_IMAGES_CACHE (default /var/tmp/broker-net-base-images).
set -euo pipefail

PYTHON_IMAGE="${PYTHON_BASE_IMAGE:-broker-net-base/python:3.11-bookworm}"
RABBITMQ_IMAGE="${RABBITMQ_BASE_IMAGE:-broker-net-base/rabbitmq:bookworm-management}"
CACHE="${BASE_IMAGES_CACHE:-/var/tmp/broker-net-base-images}"
force=false
[ "${1:-}" = "--force" ] && force=true

say() { echo "base-images: $*" >&2; }
fail() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "debootstrap and chroot need root; run this as root"
command -v debootstrap > /dev/null || fail "debootstrap is not installed (apt-get install -y debootstrap)"
docker info > /dev/null 2>&1 || fail "docker does not answer (is dockerd running?)"

# The Debian release of this machine, and the mirror its apt sources name for it.
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
mirror_from_sources() {
  local file uri suites line
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    while read -r line; do  # one-line style: deb [options] URI SUITE COMPONENT...
      set -- $line
      [ "${1:-}" = deb ] || continue
      shift
      case "${1:-}" in \[*) while [ $# -gt 0 ] && [[ "$1" != *\] ]]; do shift; done; shift ;; esac
      [ "${2:-}" = "$suite" ] && { echo "$1"; return; }
    done < "$file"
  done
  for file in /etc/apt/sources.list.d/*.sources; do  # deb822 style: URIs: / Suites: stanzas
    [ -f "$file" ] || continue
    uri="" suites=""
    while IFS= read -r line || [ -n "$line" ]; do
      case "$line" in
        URIs:*) uri="$(echo "${line#URIs:}" | awk '{print $1}')" ;;
        Suites:*) suites=" ${line#Suites:} " ;;
        "")
          [[ -n "$uri" && "$suites" == *" $suite "* ]] && { echo "$uri"; return; }
          uri="" suites="" ;;
      esac
    done < "$file"
    [[ -n "$uri" && "$suites" == *" $suite "* ]] && { echo "$uri"; return; }
  done
}
mirror="${DEBIAN_MIRROR:-$(mirror_from_sources)}"
mirror="${mirror:-http://deb.debian.org/debian}"

have_image() { docker image inspect "$1" > /dev/null 2>&1; }

# debootstrap ROOT PACKAGES: a minimal Debian root file system with PACKAGES, apt lists and
# caches removed.
bootstrap() {
  local root="$1" packages="$2"
  rm -rf "$root"
  mkdir -p "$CACHE/debs"
  say "debootstrap $suite from $mirror with $packages (a few minutes)"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$packages" \
    "$suite" "$root" "$mirror" > "$root.log" 2>&1 \
    || fail "debootstrap failed; see $root.log"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
}

# import ROOT IMAGE CHANGE...: the root file system as a one-layer image.
import() {
  local root="$1" image="$2"
  shift 2
  local changes=()
  for change in "$@"; do changes+=(--change "$change"); done
  tar --numeric-owner -C "$root" -c . | docker import "${changes[@]}" - "$image" > /dev/null
  say "built $image"
}

if $force || ! have_image "$PYTHON_IMAGE"; then
  root="$CACHE/python"
  bootstrap "$root" python3,python3-venv,ca-certificates,curl
  # python and pip on PATH in an environment of their own, as /usr/local in the official image:
  # Debian's own python3 refuses pip installs into it (PEP 668).
  chroot "$root" python3 -m venv /opt/python
  chroot "$root" /opt/python/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
  import "$root" "$PYTHON_IMAGE" \
    'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV LANG=C.UTF-8' \
    'CMD ["python3"]'
  rm -rf "$root"
else
  say "$PYTHON_IMAGE exists (--force rebuilds it)"
fi

if $force || ! have_image "$RABBITMQ_IMAGE"; then
  root="$CACHE/rabbitmq"
  bootstrap "$root" rabbitmq-server
  echo '[rabbitmq_management].' > "$root/etc/rabbitmq/enabled_plugins"
  # Debian's rabbitmq-env.conf may pin the node name or address; the image's node is
  # rabbit@HOSTNAME listening on every interface, as in the official image.
  : > "$root/etc/rabbitmq/rabbitmq-env.conf"
  mkdir -p "$root/etc/rabbitmq/conf.d"
  cat > "$root/usr/local/bin/docker-entrypoint.sh" << 'ENTRYPOINT'
#!/bin/sh
# RABBITMQ_DEFAULT_USER / _PASS / _VHOST become the first boot's administrator and vhost, as
# in the official image; logs go to the console; then the server runs as the rabbitmq user.
set -eu
umask 027
{
  echo "loopback_users.guest = false"
  echo "log.console = true"
  echo "log.file = false"
  [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || echo "default_user = $RABBITMQ_DEFAULT_USER"
  [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || echo "default_pass = $RABBITMQ_DEFAULT_PASS"
  [ -z "${RABBITMQ_DEFAULT_VHOST:-}" ] || echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
} > /etc/rabbitmq/conf.d/10-defaults.conf
chown root:rabbitmq /etc/rabbitmq/conf.d/10-defaults.conf
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
exec "$@"
ENTRYPOINT
  chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
  import "$root" "$RABBITMQ_IMAGE" \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV LANG=C.UTF-8' \
    'ENV HOME=/var/lib/rabbitmq' \
    'EXPOSE 5672 15672' \
    'VOLUME /var/lib/rabbitmq' \
    'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
    'CMD ["rabbitmq-server"]'
  rm -rf "$root"
else
  say "$RABBITMQ_IMAGE exists (--force rebuilds it)"
fi
