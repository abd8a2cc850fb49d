"""Key/value state that outlives jobs, scoped to the tenant and plugin. Values are JSON:
`get`/`set` take and return Python values, the `_raw` forms text. Errors raise
`StateError` (unavailable and conflict are retryable; bad keys, too large and bad JSON are
permanent)."""

from __future__ import annotations

import json
from typing import Any, Callable, List, Optional

from . import _host
from .errors import StateError

_MISSING = object()


def _decode(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise StateError("json", f"{key}: {e}") from None


def get(key: str, default: Any = None) -> Any:
    """The value stored under `key`, or `default` when absent or expired."""
    text = get_raw(key)
    return default if text is None else _decode(key, text)


def get_raw(key: str) -> Optional[str]:
    return _host.backend().state_get(key)


def set(key: str, value: Any, ttl_ms: Optional[int] = None) -> None:  # noqa: A001
    """Store `value` (as JSON) under `key`, expiring after `ttl_ms` when given."""
    set_raw(key, json.dumps(value), ttl_ms)


def set_raw(key: str, value: str, ttl_ms: Optional[int] = None) -> None:
    _host.backend().state_set(key, value, ttl_ms)


def delete(key: str) -> bool:
    """Delete `key`; True when it existed."""
    return _host.backend().state_delete(key)


def list_keys(prefix: str = "", limit: int = 100) -> List[str]:
    """Keys starting with `prefix`, in key order, at most `limit`."""
    return _host.backend().state_list_keys(prefix, limit)


def compare_and_swap(key: str, expected: Any, value: Any) -> bool:
    """Replace `key`'s value with `value` when it currently equals `expected` (None: the key
    must be absent). Values compare as JSON text. True when the swap happened."""
    exp = None if expected is None else json.dumps(expected)
    return _host.backend().state_cas(key, exp, json.dumps(value))


def update(key: str, f: Callable[[Any], Any], attempts: int = 5) -> Any:
    """Read, change with `f`, and write back atomically, retrying on a concurrent change;
    returns the new value. Raises a retryable `StateError("conflict")` after `attempts`."""
    for _ in range(attempts):
        current = get_raw(key)
        new = f(None if current is None else _decode(key, current))
        if _host.backend().state_cas(key, current, json.dumps(new)):
            return new
    raise StateError("conflict", f"{key} kept changing during {attempts} attempts")
