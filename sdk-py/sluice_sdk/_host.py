"""The one place that talks to the host. Inside a component it calls the `sluice:plugin`
imports that componentize-py generates (`wit_world`); `sluice_sdk.testing.FakeHost` replaces
it so a handler can be unit-tested with plain Python, no host and no build."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from .errors import EffectError, ModelError, StateError

_backend: Any = None


def backend() -> Any:
    """The active host: the test double when one is installed, else the component's imports."""
    global _backend
    if _backend is None:
        _backend = WitHost()
    return _backend


def install(host: Any) -> Any:
    """Make `host` the active host (None: back to the component's imports); returns the old."""
    global _backend
    old, _backend = _backend, host
    return old


def _snake(name: str) -> str:
    out = ""
    for i, c in enumerate(name):
        if c.isupper() and i > 0:
            out += "_"
        out += c.lower()
    return out


def _variant(value: Any) -> Tuple[str, Any]:
    """`ModelError_RateLimited(value=…)` → (`rate_limited`, value)."""
    return _snake(type(value).__name__.split("_", 1)[1]), getattr(value, "value", None)


class WitHost:
    """The real host, through componentize-py's generated bindings. Imported lazily: the
    `wit_world` package exists only while componentize-py builds the component."""

    def __init__(self) -> None:
        try:
            from wit_world.imports import effects, events, models, state, usage
            from componentize_py_types import Err, Ok
        except ImportError as e:  # pragma: no cover - only outside a component
            raise RuntimeError(
                "sluice_sdk is not running inside a Sluice component; in tests install a "
                "test double with `sluice_sdk.testing.FakeHost().install()`"
            ) from e
        self.models, self.state, self.effects = models, state, effects
        self.events, self.usage = events, usage
        self.Ok, self.Err = Ok, Err

    # models
    def _request(self, r: Any) -> Any:
        m = self.models
        role = {"system": m.Role.SYSTEM, "user": m.Role.USER, "assistant": m.Role.ASSISTANT}
        return m.ChatRequest(
            model=r.model,
            messages=[m.Message(role=role[x.role], content=x.content) for x in r.messages],
            max_tokens=r.max_tokens_,
            temperature=r.temperature_,
            response_format=m.ResponseFormat.JSON if r.format == "json" else m.ResponseFormat.TEXT,
            no_cache=r.no_cache_,
            stream_events=r.stream_,
        )

    def _model_error(self, err: Any) -> ModelError:
        kind, value = _variant(err)
        if kind == "rate_limited":
            return ModelError(kind, value.message, value.retry_after_ms)
        return ModelError(kind, str(value))

    def _response(self, r: Any) -> Any:
        from .models import ChatResponse, Usage
        return ChatResponse(
            content=r.content, model=r.model, provider=r.provider,
            usage=Usage(r.usage.input_tokens, r.usage.output_tokens, r.usage.cached_input_tokens),
            cost_micros=r.cost_micros, latency_ms=r.latency_ms,
            source=r.source.name.lower(), finish_reason=r.finish_reason,
        )

    def chat(self, request: Any) -> Any:
        try:
            return self._response(self.models.chat(self._request(request)))
        except self.Err as e:
            raise self._model_error(e.value) from None

    def chat_batch(self, requests: List[Any]) -> List[Any]:
        out = []
        for r in self.models.chat_batch([self._request(x) for x in requests]):
            if isinstance(r, self.Ok):
                out.append(self._response(r.value))
            else:
                out.append(self._model_error(r.value))
        return out

    def embed(self, model: str, inputs: List[str]) -> Any:
        from .models import EmbedResponse, Usage
        try:
            r = self.models.embed(self.models.EmbedRequest(model=model, inputs=list(inputs)))
        except self.Err as e:
            raise self._model_error(e.value) from None
        return EmbedResponse(
            vectors=r.vectors, model=r.model, provider=r.provider,
            usage=Usage(r.usage.input_tokens, r.usage.output_tokens, r.usage.cached_input_tokens),
            cost_micros=r.cost_micros, source=r.source.name.lower(),
        )

    # state
    def _state(self, f: Any, *args: Any) -> Any:
        try:
            return f(*args)
        except self.Err as e:
            kind, value = _variant(e.value)
            raise StateError(kind, str(value)) from None

    def state_get(self, key: str) -> Optional[str]:
        return self._state(self.state.get, key)

    def state_set(self, key: str, value: str, ttl_ms: Optional[int]) -> None:
        self._state(self.state.set, key, value, ttl_ms)

    def state_delete(self, key: str) -> bool:
        return self._state(self.state.delete, key)

    def state_list_keys(self, prefix: str, limit: int) -> List[str]:
        return self._state(self.state.list_keys, prefix, limit)

    def state_cas(self, key: str, expected: Optional[str], value: str) -> bool:
        return self._state(self.state.compare_and_swap, key, expected, value)

    # effects
    def _effect(self, f: Any, *args: Any) -> Any:
        try:
            return f(*args)
        except self.Err as e:
            kind, value = _variant(e.value)
            raise EffectError(kind, str(value)) from None

    def effect_begin(self, key: str) -> Optional[str]:
        """None when pending, else the recorded result (JSON text)."""
        status = self._effect(self.effects.begin, key)
        kind, value = _variant(status)
        return value if kind == "committed" else None

    def effect_commit(self, key: str, outcome: str) -> None:
        self._effect(self.effects.commit, key, outcome)

    # events
    def progress(self, message: str, fraction: Optional[float]) -> None:
        self.events.progress(message, fraction)

    def log(self, level: str, message: str, fields: List[Tuple[str, str]]) -> None:
        self.events.log(getattr(self.events.Level, level.upper()), message, fields)

    # usage
    def report_cost(self, description: str, cost_micros: int) -> Optional[str]:
        """None when accepted, else the budget's reason for refusing."""
        try:
            self.usage.report_cost(description, cost_micros)
            return None
        except self.Err as e:
            return str(e.value)

    def job_spend(self) -> Any:
        from .usage import Spend
        s = self.usage.job_spend()
        return Spend(s.cost_micros, s.input_tokens, s.output_tokens, s.calls)

    def budget_remaining(self) -> Optional[int]:
        return self.usage.budget_remaining()
