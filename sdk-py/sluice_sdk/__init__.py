"""Write Sluice job handlers in Python.

`app.py`:

    import sluice_sdk as sluice
    from sluice_sdk import models, events

    @sluice.handler
    def handle(job: sluice.Job, input):
        if not input.get("text", "").strip():
            raise sluice.Error.permanent("`text` is empty")
        reply = models.chat("fast").system("Write a short title.").user(input["text"]).send()
        events.info(f"job {job.id} titled by {reply.model}")
        return {"title": reply.content.strip(), "cost_micros": reply.cost_micros}

`sluice run .` builds it with componentize-py against the `sluice:plugin` world and runs one
job. The input is the job's JSON parsed (empty: None); the return value is serialized as
JSON. Raise `Error.retryable` / `Error.retry_after` / `Error.permanent`; the SDK's own
errors (`ModelError`, `StateError`, `EffectError`) carry the class the Rust SDK gives them.
Any other exception fails the attempt as retryable (like a Rust panic) after its traceback is
logged to the job's events. Unit-test handlers without a host with `sluice_sdk.testing`.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from . import effects, events, models, state, usage
from .errors import EffectError, Error, ModelError, StateError

__all__ = ["Job", "Error", "ModelError", "StateError", "EffectError", "handler", "models",
           "state", "effects", "events", "usage", "run"]


@dataclass
class Job:
    """What the host tells the handler about the job it runs."""
    id: str
    plugin: str = "test"
    tenant: str = "test"
    attempt: int = 1
    max_attempts: int = 1
    idempotency_key: Optional[str] = None
    tags: Dict[str, str] = field(default_factory=dict)
    deadline_unix_ms: int = 0

    @property
    def is_retry(self) -> bool:
        return self.attempt > 1

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def remaining_ms(self) -> int:
        """Milliseconds until this attempt's deadline (0 when past)."""
        return max(0, self.deadline_unix_ms - int(time.time() * 1000))


_handler: Optional[Callable[[Job, Any], Any]] = None


def handler(f: Callable[[Job, Any], Any]) -> Callable[[Job, Any], Any]:
    """Make `f(job, input)` the component's job handler. Use it once, in the module that
    componentize-py builds (`app.py`): it also defines that module's `WitWorld` export."""
    global _handler
    _handler = f
    module = sys.modules.get(f.__module__)
    if module is not None:
        setattr(module, "WitWorld", WitWorld)
    return f


def run(job: Job, input_text: str, f: Optional[Callable[[Job, Any], Any]] = None) -> str:
    """Parse the input, call the handler, serialize the output: what the host's call does,
    minus the component. Raises `Error`. Tests call it with a `testing.FakeHost` installed."""
    f = f or _handler
    if f is None:
        raise Error.permanent("no handler: decorate a function with @sluice_sdk.handler")
    try:
        value = json.loads(input_text) if input_text.strip() else None
    except ValueError as e:
        raise Error.permanent(f"invalid job input: {e}") from None
    try:
        output = f(job, value)
    except Error:
        raise
    except Exception as e:  # a bug in the handler: like a Rust panic, a retryable failure
        events.log("error", f"handler raised {type(e).__name__}: {e}",
                   {"traceback": traceback.format_exc(limit=20)})
        raise Error.retryable(f"handler raised {type(e).__name__}: {e}") from None
    try:
        return json.dumps(output)
    except (TypeError, ValueError) as e:
        raise Error.permanent(f"the job output is not JSON: {e}") from None


class WitWorld:
    """The component's export, bound by componentize-py (see `handler`)."""

    def handle(self, info: Any, input: str) -> str:
        from componentize_py_types import Err
        from wit_world.imports import types

        job = Job(id=info.id, plugin=info.plugin, tenant=info.tenant, attempt=info.attempt,
                  max_attempts=info.max_attempts, idempotency_key=info.idempotency_key,
                  tags={t.key: t.value for t in info.tags},
                  deadline_unix_ms=info.deadline_unix_ms)
        try:
            return run(job, input)
        except Error as e:
            if e.is_retryable:
                raise Err(types.JobError_Retryable(
                    types.RetryableError(message=e.message, retry_after_ms=e.retry_after_ms)))
            raise Err(types.JobError_Permanent(e.message))
