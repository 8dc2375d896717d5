#!/usr/bin/env bash
# Make sure a RabbitMQ broker with the management API answers on 127.0.0.1.
# Starts the local rabbitmq-server if it is installed and down. Exit code 0: the broker is ready.
set -u
AMQP_PORT="${BROKER_NET_TEST_AMQP_PORT:-5672}"
MGMT_URL="${BROKER_NET_TEST_MANAGEMENT_URL:-http://127.0.0.1:15672}"
QUIET="${1:-}"

say() { [ "$QUIET" = "--quiet" ] || echo "$@" >&2; }

amqp_up() { (exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT") 2>/dev/null; }
mgmt_up() { curl -fsS -u guest:guest "$MGMT_URL/api/overview" >/dev/null 2>&1; }

if amqp_up && mgmt_up; then
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  say "broker-net: no RabbitMQ answers on 127.0.0.1:$AMQP_PORT and rabbitmq-server is not installed."
  say "            Install RabbitMQ (Debian: apt-get install rabbitmq-server), then try again."
  exit 1
fi

if ! amqp_up; then
  say "broker-net: starting the local RabbitMQ (rabbitmq-server -detached)..."
  rabbitmq-server -detached >/dev/null 2>&1 || true
fi

for _ in $(seq 1 60); do
  amqp_up && break
  sleep 1
done

if ! mgmt_up; then
  say "broker-net: enabling the RabbitMQ management plugin..."
  rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 || true
fi

for _ in $(seq 1 90); do
  if amqp_up && mgmt_up; then
    say "broker-net: RabbitMQ is ready."
    exit 0
  fi
  sleep 1
done

say "broker-net: RabbitMQ did not become ready on 127.0.0.1:$AMQP_PORT with its management API at $MGMT_URL."
exit 1
