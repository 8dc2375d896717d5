#!/bin/sh
# Create broker-net's RabbitMQ users, then import definitions.json (vhost, permissions,
# policies, exchanges, queues, bindings) through the management API.
#
#   provision.sh USER[:TAGS]...
#
# Each USER's password is read from the variable named after it: hospital-a -> HOSPITAL_A_AMQP_PASSWORD.
# The admin logs in as RABBITMQ_ADMIN_USER / RABBITMQ_ADMIN_PASSWORD at RABBITMQ_MANAGEMENT_URL;
# BROKER_NET_DEFINITIONS names the definitions file. Running it again updates the passwords and
# changes nothing else. Passwords never appear on a command line.
set -eu

url="${RABBITMQ_MANAGEMENT_URL:-http://rabbitmq:15672}"
definitions="${BROKER_NET_DEFINITIONS:-/provision/definitions.json}"
admin_user="${RABBITMQ_ADMIN_USER:-admin}"
admin_password="${RABBITMQ_ADMIN_PASSWORD:?set RABBITMQ_ADMIN_PASSWORD in .env}"

fail() { echo "provision: $*" >&2; exit 1; }

# Passwords go into AMQP URLs and JSON bodies unescaped, so they keep to URL-safe characters.
check_password() {
  case "$2" in
    '') fail "no password for $1: set $3 in .env" ;;
    *[!A-Za-z0-9._~-]*) fail "$3 may hold letters, digits, '.', '_', '~' and '-' only" ;;
  esac
}

check_password "$admin_user" "$admin_password" RABBITMQ_ADMIN_PASSWORD
umask 077
credentials="$(mktemp)"
trap 'rm -f "$credentials"' EXIT
printf 'user = "%s:%s"\n' "$admin_user" "$admin_password" > "$credentials"

api() {  # api METHOD PATH [CURL-OPTION...]: one management API call as the admin.
  method="$1"
  path="$2"
  shift 2
  curl --silent --show-error --fail-with-body --config "$credentials" \
    --request "$method" --header 'content-type: application/json' "$url/api$path" "$@"
}

password_of() {  # password_of USER: the value of the variable named after USER.
  variable="$(printf '%s' "$1" | tr 'a-z-' 'A-Z_')_AMQP_PASSWORD"
  case "$variable" in *[!A-Z0-9_]*) fail "user name $1 must be letters, digits and '-'" ;; esac
  password=""
  eval "password=\${$variable:-}"
  check_password "$1" "$password" "$variable"
}

# Every password is checked before anything changes on the broker.
for spec in "$@"; do
  password_of "${spec%%:*}"
done

tries=0
while :; do
  code="$(curl --silent --output /dev/null --write-out '%{http_code}' --config "$credentials" \
    "$url/api/overview" || true)"
  case "$code" in
    200) break ;;
    401 | 403) fail "the management API refused $admin_user (RABBITMQ_ADMIN_USER / _PASSWORD)" ;;
  esac
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || fail "the management API at $url did not answer within 120 s"
  sleep 2
done

for spec in "$@"; do
  user="${spec%%:*}"
  tags=""
  [ "$user" = "$spec" ] || tags="${spec#*:}"
  password_of "$user"
  answer="$(printf '{"password": "%s", "tags": "%s"}' "$password" "$tags" \
    | api PUT "/users/$user" --data-binary @-)" || fail "creating user $user: $answer"
  echo "provision: user $user${tags:+ ($tags)}"
done

answer="$(api POST /definitions --data-binary "@$definitions")" \
  || fail "importing $definitions: $answer"
echo "provision: imported $(basename "$definitions")"
