"""Logging: quiet by default, JSON on request, and broker client noise in one line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from broker_net.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("aio_pika", "aiormq")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in noisy.items():
        logging.getLogger(name).setLevel(value)


def _raise() -> None:
    raise ConnectionResetError("CONNECTION_FORCED - broker forced connection closure")


def test_a_broker_client_traceback_becomes_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    try:
        _raise()
    except ConnectionResetError:
        logging.getLogger("aiormq.connection").warning("Connection lost", exc_info=True)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "Connection lost (ConnectionResetError: CONNECTION_FORCED" in err


def test_our_own_tracebacks_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    try:
        _raise()
    except ConnectionResetError:
        logging.getLogger("node_agent.dispatch").exception("unexpected failure")
    assert "Traceback" in capsys.readouterr().err


def test_quiet_by_default_and_json_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()
    logging.getLogger("researcher").info("not shown")
    assert capsys.readouterr().err == ""
    configure_logging("INFO", json_lines=True)
    logging.getLogger("researcher").info("shown", extra={"node": "n1"})
    entry = json.loads(capsys.readouterr().err)
    assert (entry["message"], entry["node"], entry["level"]) == ("shown", "n1", "INFO")
