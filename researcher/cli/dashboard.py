"""``researcher dashboard``: serve the live dashboard (:mod:`researcher.dashboard`) on this
machine and print its URL, with the token no other URL works without."""

from __future__ import annotations

import errno
import secrets
import signal
from types import FrameType
from typing import Annotated

import anyio
import typer

from broker_net.cli_errors import USAGE, CliError, quiet_broker_clients
from researcher.cli.broker import load_settings
from researcher.dashboard.app import Dashboard
from researcher.dashboard.server import bind, is_loopback, serve, url_of
from researcher.dashboard.snapshot import StoreReader
from researcher.dashboard.watch import BrokerWatch

DEFAULT_PORT = 8770
"""The port the dashboard listens on unless told otherwise."""


def dashboard_command(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on; one other machines reach shows your jobs to "
            "whoever has the URL."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = (
        DEFAULT_PORT
    ),
    interval: Annotated[
        float, typer.Option(help="Seconds between two updates of an open page.", min=0.2)
    ] = 1.0,
) -> None:
    """Serve a read-only web page of jobs, their task DAG and rounds, training metrics,
    nodes and queues, updated live; print its URL (with a fresh token) and run until Ctrl-C
    or SIGTERM, which stop it cleanly (exit code 0).
    Without a broker or management API the page still serves, showing what it cannot know
    as unknown; queues, rates and dead letters stay the RabbitMQ management UI's."""
    settings = load_settings()
    if not 0 <= port <= 65535:
        raise CliError(f"--port {port} is not a port (0 to 65535)", USAGE)
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise CliError(_bind_error(host, port, exc)) from None
    if not is_loopback(host):
        typer.echo(
            f"warning: listening on {host}, not only on this machine: anyone who can reach "
            "it and has the URL sees your jobs",
            err=True,
        )
    token = secrets.token_urlsafe(24)
    reader = StoreReader(settings.data_dir)
    watch = BrokerWatch(settings)
    dashboard = Dashboard(reader, watch, token=token, interval=interval)
    # Until the server handles it, SIGTERM stops the command as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        typer.echo(f"dashboard: {url_of(sock, token)}", err=False)
        if not reader.path.exists():
            typer.echo(
                f"no job store yet at {reader.path}: jobs show up once one is submitted", err=True
            )
        with quiet_broker_clients():
            anyio.run(serve, dashboard, sock)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        reader.close()
    typer.echo("dashboard stopped", err=True)


def _interrupt(sig: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use; choose another with --port (0: any free one)"
    reason = (exc.strerror or str(exc)).lower()
    return f"cannot listen on {host}:{port} ({reason}); check --host and --port"
