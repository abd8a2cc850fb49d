"""Model calls, with the same builder shape as the Rust SDK:

    reply = models.chat("fast").system("Answer briefly.").user(text).max_tokens(60).send()
    verdict = models.chat("fast").user(text).json().temperature(0.0).send().json()

Every call goes through the host's gateway (journal, cache, budgets, rate limits, failover).
A failed call raises `ModelError`, retryable or permanent as the Rust SDK classifies it.
"""

from __future__ import annotations

import copy
import json as _json
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Union

from . import _host
from .errors import Error, ModelError

__all__ = ["Message", "ChatRequest", "ChatResponse", "EmbedResponse", "Usage", "chat",
           "chat_all", "embed", "ModelError"]

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    """One message: `role` is `system`, `user` or `assistant`."""
    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise Error.permanent(f"message role must be one of {ROLES}, got {self.role!r}")


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


@dataclass
class ChatResponse:
    """A completed chat call. `source` is `provider`, `cache` or `journal`."""
    content: str
    model: str
    provider: str
    usage: Usage = field(default_factory=Usage)
    cost_micros: int = 0
    latency_ms: int = 0
    source: str = "provider"
    finish_reason: str = "stop"

    def json(self) -> Any:
        """The reply parsed as JSON, tolerating a Markdown code fence around it. Raises
        `ValueError` when it is not JSON."""
        return _json.loads(strip_code_fence(self.content))

    @property
    def is_truncated(self) -> bool:
        """Whether the reply was cut off by the token limit."""
        return self.finish_reason == "length"


@dataclass
class EmbedResponse:
    vectors: List[List[float]]
    model: str
    provider: str
    usage: Usage = field(default_factory=Usage)
    cost_micros: int = 0
    source: str = "provider"


class ChatRequest:
    """A chat request, built step by step and sent with `send()`. Each step returns the
    request; `copy()` to vary one."""

    def __init__(self, model: str):
        self.model = model
        self.messages: List[Message] = []
        self.max_tokens_: Optional[int] = None
        self.temperature_: Optional[float] = None
        self.format = "text"
        self.no_cache_ = False
        self.stream_ = False

    def system(self, content: str) -> "ChatRequest":
        return self.message(Message("system", content))

    def user(self, content: str) -> "ChatRequest":
        return self.message(Message("user", content))

    def assistant(self, content: str) -> "ChatRequest":
        return self.message(Message("assistant", content))

    def message(self, message: Message) -> "ChatRequest":
        self.messages.append(message)
        return self

    def with_messages(self, messages: Sequence[Message]) -> "ChatRequest":
        self.messages.extend(messages)
        return self

    def max_tokens(self, n: int) -> "ChatRequest":
        """The most tokens the reply may have (the host reserves budget for them)."""
        if not 0 < int(n) < 2**32:
            raise Error.permanent(f"max_tokens must be between 1 and 2^32-1, got {n}")
        self.max_tokens_ = int(n)
        return self

    def temperature(self, t: float) -> "ChatRequest":
        """Sampling temperature, 0.0 to 2.0."""
        self.temperature_ = float(t)
        return self

    def json(self) -> "ChatRequest":
        """Ask for a single JSON object (the provider's JSON mode where it has one)."""
        self.format = "json"
        return self

    def no_cache(self) -> "ChatRequest":
        """Skip the host's response cache (the call is still journaled)."""
        self.no_cache_ = True
        return self

    def stream(self) -> "ChatRequest":
        """Publish the reply's token deltas as job events while it streams."""
        self.stream_ = True
        return self

    def copy(self) -> "ChatRequest":
        return copy.deepcopy(self)

    def send(self) -> ChatResponse:
        """Make the call. Raises `ModelError`."""
        return _host.backend().chat(self)

    def send_json(self) -> Any:
        """Make the call in JSON mode and parse the reply; a reply that is not JSON is a
        permanent error."""
        reply = self.copy().json().send()
        try:
            return reply.json()
        except ValueError as e:
            raise Error.permanent(f"{reply.model} did not reply with JSON: {e}") from None

    def __repr__(self) -> str:
        return (f"ChatRequest(model={self.model!r}, messages={self.messages!r}, "
                f"format={self.format!r})")


def chat(model: str) -> ChatRequest:
    """Start a chat request to a model alias (`fast`, `smart`, …) or `provider/model`."""
    return ChatRequest(model)


def chat_all(requests: Sequence[ChatRequest]) -> List[Union[ChatResponse, ModelError]]:
    """Send several requests at once (the host runs them concurrently). Each item is a
    `ChatResponse` or the `ModelError` of that call, in request order."""
    return _host.backend().chat_batch(list(requests))


def embed(model: str, inputs: Sequence[str]) -> EmbedResponse:
    """Embed texts; one vector per input, in order. Raises `ModelError`."""
    return _host.backend().embed(model, list(inputs))


def strip_code_fence(text: str) -> str:
    """The text inside a Markdown code fence (```json … ```), or the whole text trimmed."""
    t = text.strip()
    if t.startswith("```") and t.endswith("```") and len(t) >= 6:
        body = t[3:-3]
        first, sep, after = body.partition("\n")
        # Drop the info string (`json`) on the opening line.
        if sep and (not first.strip() or first.strip().isalnum()):
            body = after
        return body.strip()
    return t
