"""Typed errors. Every error the SDK raises is an `Error`, retryable or permanent, so an
uncaught one fails the job with the right class (see `Error`)."""

from __future__ import annotations

from typing import Optional


class Error(Exception):
    """A job failure: retryable (the host retries with backoff while attempts remain) or
    permanent (the job becomes dead at once).

    Raise `Error.retryable(...)`, `Error.retry_after(..., ms)` or `Error.permanent(...)`;
    the SDK's own errors (`ModelError`, `StateError`, `EffectError`) are subclasses with the
    class the Rust SDK gives them.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after_ms: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.is_retryable = retryable
        self.retry_after_ms = retry_after_ms if retryable else None

    @classmethod
    def retryable(cls, message: str) -> "Error":
        """The failure may pass: retry the job while attempts remain."""
        return Error(message, retryable=True)

    @classmethod
    def retry_after(cls, message: str, delay_ms: int) -> "Error":
        """Retryable, but not before `delay_ms` milliseconds."""
        return Error(message, retryable=True, retry_after_ms=int(delay_ms))

    @classmethod
    def permanent(cls, message: str) -> "Error":
        """The failure will not pass by retrying: the job becomes dead now."""
        return Error(message, retryable=False)

    def context(self, what: str) -> "Error":
        """The same error with `what: ` in front of its message."""
        return Error(f"{what}: {self.message}", retryable=self.is_retryable,
                     retry_after_ms=self.retry_after_ms)

    def __repr__(self) -> str:
        kind = "retryable" if self.is_retryable else "permanent"
        return f"Error.{kind}({self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Error) and other.message == self.message
                and other.is_retryable == self.is_retryable
                and other.retry_after_ms == self.retry_after_ms)

    __hash__ = Exception.__hash__


class ModelError(Error):
    """A model call failed. `kind` is one of `budget_exceeded`, `rate_limited`, `unavailable`,
    `invalid_request`, `timeout`, `content_filtered`; rate limits, outages and timeouts are
    retryable, the rest permanent (as in the Rust SDK)."""

    RETRYABLE = ("rate_limited", "unavailable", "timeout")
    TITLES = {
        "budget_exceeded": "budget exceeded",
        "rate_limited": "rate limited",
        "unavailable": "model unavailable",
        "invalid_request": "invalid model request",
        "timeout": "model call timed out",
        "content_filtered": "content filtered",
    }

    def __init__(self, kind: str, detail: str, retry_after_ms: Optional[int] = None):
        self.kind = kind
        self.detail = detail
        super().__init__(f"{self.TITLES.get(kind, kind)}: {detail}",
                         retryable=kind in self.RETRYABLE, retry_after_ms=retry_after_ms)


class StateError(Error):
    """A state operation failed: `unavailable` and `conflict` are retryable; `invalid_key`,
    `too_large` and `json` (a stored value that does not parse) are permanent."""

    TITLES = {
        "invalid_key": "invalid state key",
        "too_large": "state value too large",
        "unavailable": "state store unavailable",
        "conflict": "state conflict",
        "json": "state value is not valid JSON",
    }

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        self.detail = detail
        super().__init__(f"{self.TITLES.get(kind, kind)}: {detail}",
                         retryable=kind in ("unavailable", "conflict"))


class EffectError(Error):
    """An effect's journal could not be used: `unavailable` is retryable, `invalid_key`
    permanent."""

    TITLES = {"invalid_key": "invalid effect key", "unavailable": "effect journal unavailable"}

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        self.detail = detail
        super().__init__(f"{self.TITLES.get(kind, kind)}: {detail}",
                         retryable=kind == "unavailable")
