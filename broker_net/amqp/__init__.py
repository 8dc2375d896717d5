"""The RabbitMQ transport: aio-pika behind the Transport protocol, and its only user."""

from broker_net.amqp.transport import AmqpTransport

__all__ = [
    "AmqpTransport",
]
