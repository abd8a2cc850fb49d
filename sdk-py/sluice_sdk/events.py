"""Progress reports and structured logs for the job's event stream, webhook and traces."""

from __future__ import annotations

import math
from typing import Mapping, Optional

from . import _host

LEVELS = ("trace", "debug", "info", "warn", "error")


def progress(message: str, fraction: Optional[float] = None) -> None:
    """Report progress, with an optional fraction done (clamped to 0..1; NaN dropped)."""
    if fraction is not None:
        fraction = None if math.isnan(fraction) else min(1.0, max(0.0, float(fraction)))
    _host.backend().progress(str(message), fraction)


def log(level: str, message: str, fields: Optional[Mapping[str, object]] = None) -> None:
    """A log line at `level` (trace, debug, info, warn, error) with key/value fields."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {LEVELS}, got {level!r}")
    pairs = [(str(k), str(v)) for k, v in (fields or {}).items()]
    _host.backend().log(level, str(message), pairs)


def trace(message: str, **fields: object) -> None:
    log("trace", message, fields)


def debug(message: str, **fields: object) -> None:
    log("debug", message, fields)


def info(message: str, **fields: object) -> None:
    log("info", message, fields)


def warn(message: str, **fields: object) -> None:
    log("warn", message, fields)


def error(message: str, **fields: object) -> None:
    log("error", message, fields)
