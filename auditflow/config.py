"""Settings from flags with `AUDITFLOW_*` environment variables as defaults (flags win).

A server's variables carry its name, `AUDITFLOW_GATEWAY_PORT` or `AUDITFLOW_PROCESSOR_PORT`,
so that both can be configured in one environment (a compose file, a shell).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

ENV_PREFIX = "AUDITFLOW_"


class ConfigError(ValueError):
    """A setting cannot be used: the message says which and what to do (one line, exit 2)."""


def env_name(dest: str, service: str = "") -> str:
    prefix = f"{ENV_PREFIX}{service.upper()}_" if service else ENV_PREFIX
    return prefix + dest.upper()


def add(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: Any,
    type: Callable[[str], Any] = str,
    help: str,
    service: str = "",
    aliases: Sequence[str] = (),
    **kwargs: Any,
) -> None:
    """Add `--flag` whose default comes from AUDITFLOW_[SERVICE_]FLAG, then from `default`.
    `aliases`: other names of the same flag (each with its variable, read when FLAG's is not
    set), so that a renamed flag keeps working where it is already used."""
    dest = _dest(flag)
    env = env_name(dest, service)
    names = (env, *(env_name(_dest(alias), service) for alias in aliases))
    source = next((name for name in names if name in os.environ), env)
    raw = os.environ.get(source)
    value = default
    if raw is not None:
        try:
            value = type(raw)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{source}={raw!r}: {exc}")
    parser.add_argument(
        flag,
        *aliases,
        dest=dest,
        type=type,
        default=value,
        help=f"{help} [env {env}; default: {default if default != '' else 'none'}]",
        **kwargs,
    )


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def interval(text: str) -> float:
    """A number of seconds greater than zero (an interval of 0 would make a loop spin)."""
    value = float(text)
    if not value > 0:
        raise ValueError("must be greater than zero")
    return value


def boolean(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """A count where 0 means no limit."""
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """A parser of whole numbers from `low` to `high`."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    parse.__name__ = f"integer between {low} and {high}"
    return parse


def adder(parser: argparse.ArgumentParser, service: str = "") -> Callable[..., None]:
    """`add` bound to one parser and service: `add("--flag", "help", default=...)`."""

    def add_flag(flag: str, help: str, **kwargs: Any) -> None:
        add(parser, flag, help=help, service=service, **kwargs)

    return add_flag


def add_common(parser: argparse.ArgumentParser, *, port: int, database: str, service: str = "") -> None:
    """Flags both servers have."""
    add_flag = adder(parser, service)
    add_flag("--host", "address to listen on", default="127.0.0.1")
    add_flag("--port", "gRPC port (0 picks a free one)", default=port, type=int)
    add_flag("--database-url", "SQLAlchemy URL of this service's database", default=database)
    add_flag("--log-level", "DEBUG, INFO, WARNING or ERROR", default="INFO", type=log_level)
    add_flag(
        "--log-format",
        "text (a line per record, for a terminal) or json (an object per line, for a log pipeline)",
        default="text",
        type=log_format,
    )
    add_flag(
        "--metrics-address",
        "HOST:PORT to serve Prometheus metrics at /metrics (:PORT: on loopback; port 0: a free one); empty: no metrics",
        default="",
        type=listen_address,
    )
    add_flag("--plugin", "comma-separated modules that register procedures", default="")


def log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"expected DEBUG, INFO, WARNING or ERROR, not {text!r}")
    return value


def log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise argparse.ArgumentTypeError(f"expected text or json, not {text!r}")
    return value


def listen_address(text: str) -> str:
    """HOST:PORT to listen on ("" for none)."""
    value = text.strip()
    if not value:
        return ""
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (a port from 0 to 65535), not {value!r}")
    return value


def csv(text: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def pairs(text: str) -> tuple[tuple[str, str], ...]:
    """`a=b,c=d` as ((a, b), (c, d))."""
    found = []
    for part in csv(text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"expected NAME=VALUE, got {part!r}")
        found.append((key.strip(), value.strip()))
    return tuple(found)
