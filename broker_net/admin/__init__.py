"""Broker administration: the RabbitMQ management API and least-privilege provisioning.

What a user needs is importable from here: ``from broker_net.admin import ManagementClient``.
:mod:`broker_net.admin.management` is the management HTTP API client;
:mod:`broker_net.admin.provisioning` creates the vhost and one user per party with only the
permissions its role needs.
"""

from broker_net.admin.management import ManagementClient
from broker_net.admin.provisioning import (
    Permissions,
    grant,
    new_password,
    node_permissions,
    provision,
    researcher_permissions,
)

__all__ = [
    "ManagementClient",
    "Permissions",
    "grant",
    "new_password",
    "node_permissions",
    "provision",
    "researcher_permissions",
]
