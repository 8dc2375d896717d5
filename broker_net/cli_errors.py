"""How every broker-net command reports a failure: one line on stderr, never a traceback.

The line names what is wrong and what to do::

    error: BROKER_NET_NODE_NODE_ID is not set (unique id of this node); set it or pass --node-id

With ``--json`` it is one JSON object instead, still on stderr, so stdout holds either the
command's JSON answer or nothing::

    {"error": "no job has id 'job_x'", "code": 2}

Exit codes: :data:`USAGE` (2) for usage and input errors (bad arguments, missing files, unknown
ids, invalid settings or key files), :data:`FAILED` (1) for an operation that failed (broker
or management API unreachable or refusing, a node answering with an error).

- :class:`CliError`: an error a command names itself, with its exit code;
- :func:`explain`: the :class:`CliError` for any exception (exception groups unwrapped to their
  first meaningful error, passwords in URLs masked);
- :func:`read_settings`: settings, or a :class:`CliError` naming the first bad field's variable;
- :func:`guard`: wraps a command so that anything it raises becomes the one line;
- :class:`CliApp`: a typer app whose usage errors are one line too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

from broker_net.crypto.identities import KeyFileError
from broker_net.errors import BrokerAccessError, BrokerNetError, SecurityError, TransportError

USAGE = 2
"""Exit code of a usage or input error."""
FAILED = 1
"""Exit code of an operation that failed."""

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound=BaseSettings)

logger = logging.getLogger(__name__)
_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^\s/@]+@", re.IGNORECASE)


class CliError(Exception):
    """An error a command reports as one line (credentials in URLs masked), with the exit
    code it ends with."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message
        self.code = code


def one_line(text: str) -> str:
    """``text`` on one line, with the credentials of any URL in it masked."""
    return _CREDENTIALS.sub(r"\1***@", " ".join(str(text).split()))


def first_error(exc: BaseException) -> BaseException:
    """The error an exception group stands for: its first leaf that is not a cancellation,
    a :class:`CliError` first when there is one."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = [first_error(inner) for inner in exc.exceptions]
    meaningful = [e for e in leaves if not isinstance(e, asyncio.CancelledError)]
    named = [e for e in meaningful if isinstance(e, CliError)]
    return (named or meaningful or leaves or [exc])[0]


def explain(exc: BaseException) -> CliError:
    """The one-line error that reports ``exc``."""
    exc = first_error(exc)
    if isinstance(exc, CliError):
        return exc
    if _is_usage_error(exc):
        return _usage_error(exc)
    if type(exc).__name__ == "Abort":  # typer's (click's) Abort, as Ctrl-C at a prompt
        return CliError("aborted")
    if isinstance(exc, ValidationError):
        return settings_error(exc)
    if isinstance(exc, SettingsError):
        return CliError(f"cannot read the settings: {exc}", USAGE)
    if isinstance(exc, KeyFileError | SecurityError):
        return CliError(str(exc), USAGE)
    if isinstance(exc, BrokerAccessError):
        return CliError(f"the broker refused access: {exc}")
    if isinstance(exc, TransportError):
        return CliError(f"broker error: {exc}")
    if isinstance(exc, TimeoutError):
        return CliError(f"timed out: {exc}" if str(exc) else "timed out")
    if isinstance(exc, ConnectionError):
        return CliError(f"connection failed: {exc}")
    if isinstance(exc, OSError):
        return file_error(exc)
    if isinstance(exc, BrokerNetError):
        return CliError(str(exc))
    logger.debug("unexpected error", exc_info=exc)
    return CliError(f"unexpected {type(exc).__name__}: {exc}")


def file_error(exc: OSError) -> CliError:
    """A file that cannot be read or written: an input error."""
    reason = (exc.strerror or str(exc)).lower()
    if isinstance(exc, FileExistsError) and exc.filename and os.path.isfile(exc.filename):
        reason = "it is a file, where a folder is needed"
    target = f" {exc.filename}" if exc.filename else ""
    return CliError(f"cannot use{target}: {reason}", USAGE)


def validation_summary(exc: ValidationError, document: Any = None) -> str:
    """A pydantic error in a few words: the first bad field's path and what is wrong with it,
    e.g. ``tasks[0].initial_model.model: must be 'final', 'best' or a whole number (got
    'worst')``. The errors of a union's branches at one place are one problem. With the
    validated ``document`` the branch names pydantic puts in paths are told from field names
    exactly; without it, names that cannot be keys (``literal['a','b']``) are left out."""
    problems: dict[tuple[str | int, ...], list[Any]] = {}
    for error in exc.errors():
        problems.setdefault(_user_path(error, document), []).append(error)
    for place, errors in list(problems.items()):
        # A branch that failed inside (nodes[0]: must be a string) says more than the others
        # failing whole at its place (nodes: must be 'all').
        inside = any(len(other) > len(place) and other[: len(place)] == place for other in problems)
        kept = [e for e in errors if not (inside and e["loc"] and e["loc"][-1:] != place[-1:])]
        if kept:
            problems[place] = kept
        else:
            del problems[place]
    (path, errors), *others = problems.items()
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    more = f" (and {len(others)} more problem{'s' if len(others) > 1 else ''})"
    return f"{where or 'value'}: {_problem(errors)}" + (more if others else "")


_NOT_A_KEY = re.compile(r"[^\w.-]|^(int|float|str|bool|none|list|dict)$")
_EXPECTED = {
    "int": "a whole number", "float": "a number", "bool": "true or false", "string": "a string",
    "list": "a list", "dict": "a mapping", "model": "a mapping", "none": "empty",
}  # fmt: skip


def _user_path(error: Any, document: Any) -> tuple[str | int, ...]:
    """The path of ``error`` as the user wrote it: without the union branch names in it."""
    loc, path, here = error["loc"], [], document
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if document is not None:
            if isinstance(here, dict) and part in here:
                here = here[part]
            elif isinstance(here, list) and isinstance(part, int) and part < len(here):
                here = here[part]
            elif not (last and error["type"] == "missing"):
                continue  # a branch of a union: not in what the user wrote
        elif isinstance(part, str) and _NOT_A_KEY.search(part):
            continue
        path.append(part)
    if error["type"] == "union_tag_invalid":
        path.append(str(error["ctx"]["discriminator"]).strip("'"))
    return tuple(path)


def _problem(errors: list[Any]) -> str:
    """What is wrong at one place, the union's branches' expectations joined in one line."""
    expected: list[str] = []
    for error in errors:
        kind, ctx = error["type"], error.get("ctx") or {}
        if kind == "literal_error" or kind == "union_tag_invalid":
            choices = str(ctx.get("expected") or ctx.get("expected_tags"))
            expected += re.split(r", | or ", choices)
        elif kind.split("_")[0] in _EXPECTED and kind.endswith(("_type", "_parsing")):
            expected.append(_EXPECTED[kind.split("_")[0]])
        elif len(errors) == 1:
            message = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
            return message[:1].lower() + message[1:]
        else:
            expected.append(re.sub(r"^Input should be ", "", error["msg"]))
    got = errors[0].get("input")
    if errors[0]["type"] == "union_tag_invalid":
        got = errors[0]["ctx"]["tag"]
    choices = expected[0] if len(expected) == 1 else f"{', '.join(expected[:-1])} or {expected[-1]}"
    return f"must be {choices} (got {one_line(repr(got))[:60]})"


def report(error: CliError, *, as_json: bool = False) -> None:
    """Print ``error`` as the one line on stderr (a JSON object with ``as_json``)."""
    message = error.message
    if as_json:
        typer.echo(json.dumps({"error": message, "code": error.code}), err=True)
    else:
        typer.echo(f"error: {message}", err=True)


def fail(exc: BaseException, *, as_json: bool = False) -> typer.Exit:
    """Report ``exc`` and return the :class:`typer.Exit` to raise."""
    error = explain(exc)
    report(error, as_json=as_json)
    return typer.Exit(error.code)


def guard(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command function: whatever it raises is reported as one line (as JSON when
    it was called with ``as_json=True``) and ends the command with its exit code."""

    @functools.wraps(command)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            raise fail(exc, as_json=bool(kwargs.get("as_json"))) from None
        except BaseExceptionGroup as group:  # a group of cancellations and errors
            raise fail(group, as_json=bool(kwargs.get("as_json"))) from None

    return guarded


def read_settings(cls: type[S], *, options: Mapping[str, str] | None = None, **values: Any) -> S:
    """``cls(**values)``; an invalid or missing setting is a :class:`CliError` (exit 2) naming
    its environment variable, and the command option that sets it (from ``options``, field
    name -> option) if there is one."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise settings_error(exc, cls, options or {}) from None
    except SettingsError as exc:
        raise CliError(f"cannot read the settings: {exc}", USAGE) from None


def settings_error(
    exc: ValidationError,
    cls: type[BaseSettings] | None = None,
    options: Mapping[str, str] | None = None,
) -> CliError:
    """The first problem of a settings :class:`ValidationError`, naming its variable."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    prefix = str(cls.model_config.get("env_prefix", "")) if cls is not None else ""
    variable = f"{prefix}{field.upper()}" if prefix else field
    option = (options or {}).get(field)
    if first["type"] == "missing":
        info = cls.model_fields.get(field) if cls is not None else None
        about = re.split(r"[;.]", info.description)[0] if info and info.description else ""
        about = f" ({about[:1].lower()}{about[1:]})" if about else ""
        hint = f"; set it or pass {option}" if option else "; set it in the environment"
        return CliError(f"{variable} is not set{about}{hint}", USAGE)
    message = re.sub(r"^(Value error|Assertion failed), ", "", first["msg"])
    if first["type"] != "value_error" and "password" not in field:
        message += f" (got {one_line(repr(first.get('input')))})"
    where = f"{variable} (or {option})" if option else variable
    return CliError(f"invalid {where}: {message}", USAGE)


@contextmanager
def quiet_broker_clients() -> Iterator[None]:
    """Silence aio-pika's and aiormq's own reports while the caller reports their errors
    itself: a failed connection must not add lines to the one the command prints. Logging
    at INFO or DEBUG (asked for) keeps them."""
    loggers = [logging.getLogger(name) for name in ("aio_pika", "aiormq")]
    levels = [each.level for each in loggers]
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        for each in loggers:
            each.setLevel(max(logging.CRITICAL, each.level))
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def _is_usage_error(exc: BaseException) -> bool:
    """A typer (click) error about the command line."""
    return hasattr(exc, "exit_code") and hasattr(exc, "format_message")


def _usage_error(exc: BaseException) -> CliError:
    message = str(exc.format_message()).strip()  # type: ignore[attr-defined]
    message = message.replace("Value error, ", "")
    message = message[:1].lower() + message[1:] if message[1:2].islower() else message
    context = getattr(exc, "ctx", None)
    where = f"; see '{context.command_path} --help'" if context is not None else ""
    return CliError(f"{message.rstrip('.')}{where}", int(exc.exit_code))  # type: ignore[attr-defined]


class CliApp(typer.Typer):
    """A typer app for a console script: a usage error is one line too, and nothing a
    command raises escapes as a traceback. ``--json`` anywhere on the command line makes
    such an error a JSON object."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        argv = list(kwargs.pop("args", None) or sys.argv[1:])
        as_json = "--json" in argv
        command = typer.main.get_command(self)
        try:
            result = command.main(args=argv, standalone_mode=False, **kwargs)
        except Exception as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments: show the help
                exc.show()  # type: ignore[attr-defined]
                sys.exit(USAGE)
            error = explain(exc)
            report(error, as_json=as_json)
            sys.exit(error.code)
        except BaseExceptionGroup as group:
            error = explain(group)
            report(error, as_json=as_json)
            sys.exit(error.code)
        sys.stdout.flush()
        sys.exit(result if isinstance(result, int) else 0)
