"""A small client for the RabbitMQ management HTTP API.

Used to provision vhosts, users and permissions, and to read queue and connection figures for
``researcher status``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from broker_net.errors import BrokerAccessError, TransportError


def _q(name: str) -> str:
    return quote(name, safe="")


class ManagementClient:
    """Async client of the management API.

    Args:
        url: base URL of the API, e.g. ``http://127.0.0.1:15672``.
        username, password: management credentials.
        timeout: seconds per HTTP call.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:15672",
        username: str = "guest",
        password: str = "guest",
        *,
        timeout: float = 10.0,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/") + "/api", auth=(username, password), timeout=timeout
        )

    async def __aenter__(self) -> ManagementClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise TransportError(f"management API unreachable: {exc}") from exc
        if response.status_code in (401, 403):
            raise BrokerAccessError(f"management API refused {method} {path}")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise TransportError(
                f"management API {method} {path}: {response.status_code} {response.text}"
            )
        return response.json() if response.content else None

    async def overview(self) -> dict[str, Any]:
        """Broker-wide figures and versions."""
        return dict(await self._call("GET", "/overview") or {})

    async def create_vhost(self, vhost: str) -> None:
        """Create a vhost (idempotent)."""
        await self._call("PUT", f"/vhosts/{_q(vhost)}", {})

    async def delete_vhost(self, vhost: str) -> None:
        """Delete a vhost and everything in it."""
        await self._call("DELETE", f"/vhosts/{_q(vhost)}")

    async def create_user(self, username: str, password: str, tags: str = "") -> None:
        """Create or update a user."""
        await self._call("PUT", f"/users/{_q(username)}", {"password": password, "tags": tags})

    async def delete_user(self, username: str) -> None:
        """Delete a user."""
        await self._call("DELETE", f"/users/{_q(username)}")

    async def set_permissions(
        self, vhost: str, username: str, *, configure: str, write: str, read: str
    ) -> None:
        """Set a user's configure / write / read regular expressions on a vhost."""
        await self._call(
            "PUT",
            f"/permissions/{_q(vhost)}/{_q(username)}",
            {"configure": configure, "write": write, "read": read},
        )

    async def set_topic_permissions(
        self, vhost: str, username: str, exchange: str, *, write: str, read: str
    ) -> None:
        """Restrict which routing keys ``username`` may publish with (write) or bind with
        (read) on the topic exchange ``exchange``."""
        await self._call(
            "PUT",
            f"/topic-permissions/{_q(vhost)}/{_q(username)}",
            {"exchange": exchange, "write": write, "read": read},
        )

    async def queues(self, vhost: str, prefix: str = "") -> list[dict[str, Any]]:
        """Queues of a vhost whose names start with ``prefix``."""
        found = await self._call("GET", f"/queues/{_q(vhost)}") or []
        return [queue for queue in found if str(queue.get("name", "")).startswith(prefix)]

    async def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        """One queue's figures, or ``None`` when it does not exist."""
        found = await self._call("GET", f"/queues/{_q(vhost)}/{_q(name)}")
        return dict(found) if found is not None else None

    async def connections(self) -> list[dict[str, Any]]:
        """Every client connection."""
        return list(await self._call("GET", "/connections") or [])

    async def close_connection(self, name: str) -> None:
        """Close a client connection by its name."""
        await self._call("DELETE", f"/connections/{_q(name)}")

    async def put_policy(self, vhost: str, name: str, definition: dict[str, Any]) -> None:
        """Create or replace a policy."""
        await self._call("PUT", f"/policies/{_q(vhost)}/{_q(name)}", definition)

    async def load_definitions(self, vhost: str, definitions: dict[str, Any]) -> None:
        """Import a definitions document into ``vhost``."""
        await self._call("POST", f"/definitions/{_q(vhost)}", definitions)

    async def get_messages(self, vhost: str, queue: str, count: int = 1) -> list[dict[str, Any]]:
        """Peek at messages of a queue (they are requeued)."""
        return list(
            await self._call(
                "POST",
                f"/queues/{_q(vhost)}/{_q(queue)}/get",
                {"count": count, "ackmode": "ack_requeue_true", "encoding": "base64"},
            )
            or []
        )
