"""Serving the dashboard: its socket, uvicorn, and the watch on the broker beside it."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import anyio
import uvicorn

from researcher.dashboard.app import Dashboard


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port).

    Raises:
        OSError: the address cannot be used (the port is taken, the host is not this
            machine's, ...).
    """
    family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches: ``localhost``, 127.0.0.0/8, ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_of(sock: socket.socket, token: str) -> str:
    """The URL to open: the socket's address with the token."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


async def serve(dashboard: Dashboard, sock: socket.socket) -> None:
    """Serve ``dashboard`` on ``sock`` while its watch runs, until cancelled or interrupted."""
    config = uvicorn.Config(
        dashboard.app(), log_config=None, access_log=False, ws="none", http="h11",
        lifespan="off", server_header=False, timeout_graceful_shutdown=3,
    )  # fmt: skip
    server = _Server(config, dashboard)
    async with anyio.create_task_group() as group:
        group.start_soon(dashboard.watch.run)
        try:
            await server.serve(sockets=[sock])
        finally:
            dashboard.close()
            group.cancel_scope.cancel()


class _Server(uvicorn.Server):
    """uvicorn's server, which on Ctrl-C (or SIGTERM) also ends the dashboard's event
    streams, so that it stops at once rather than wait for them."""

    def __init__(self, config: uvicorn.Config, dashboard: Dashboard) -> None:
        super().__init__(config)
        self._dashboard = dashboard

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._dashboard.closing = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Ctrl-C and SIGTERM stop the server while it serves, as uvicorn's, but are not
        raised again once it stopped: the command ends as a stop asked for (exit code 0)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach only the main thread
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {stop: signal.signal(stop, self.handle_exit) for stop in stops}
        try:
            yield
        finally:
            for stop, handler in previous.items():
                signal.signal(stop, handler)


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
