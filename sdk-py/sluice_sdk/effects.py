"""Side effects that happen once per job even when the job runs again:

    receipt = effects.once("send-welcome-email", lambda: mailer.send(...))

The host journals the result by key; a retried job gets the recorded result back and the
function does not run again."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from . import _host
from .errors import EffectError, Error

__all__ = ["once", "begin", "commit_raw", "EffectError"]


def once(key: str, effect: Callable[[], Any]) -> Any:
    """Run `effect` at most once per job under `key` and return its (JSON-able) result. A
    result recorded by an earlier attempt is returned without running `effect`; an exception
    from `effect` propagates without recording, so the next attempt runs it again."""
    recorded = begin(key)
    if recorded is not None:
        try:
            return json.loads(recorded)
        except ValueError as e:
            raise Error.permanent(f"effect {key}: the recorded result is not JSON: {e}") from None
    value = effect()
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as e:
        raise Error.permanent(f"effect {key}: its result cannot be recorded as JSON: {e}") from None
    commit_raw(key, text)
    return value


def begin(key: str) -> Optional[str]:
    """None when `key` is not committed yet, else its recorded result (JSON text)."""
    return _host.backend().effect_begin(key)


def commit_raw(key: str, outcome: str) -> None:
    """Record that the effect under `key` ran; committing twice keeps the first result."""
    _host.backend().effect_commit(key, outcome)
