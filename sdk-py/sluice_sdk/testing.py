"""A host-less test double: run a handler with plain Python (`python -m unittest`), no
component and no host.

    from sluice_sdk import testing, Job, run
    host = testing.FakeHost(replies={"fast": '{"label": "bug", "confidence": 0.9}'}).install()
    out = json.loads(run(Job("j1"), json.dumps({...}), handle))
    assert host.calls[0].model == "fast"
    host.uninstall()

Replies are given per model as text, as a `ChatResponse`, as a `ModelError` to raise, or as
a function of the request; state and effects are dicts; events and reported costs are lists.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _host
from .errors import ModelError, StateError
from .models import ChatRequest, ChatResponse, EmbedResponse, Usage
from .usage import Spend

Reply = Union[str, ChatResponse, ModelError, Callable[[ChatRequest], Any]]


class FakeHost:
    def __init__(self, replies: Optional[Dict[str, Reply]] = None,
                 default: Optional[Reply] = None, budget_remaining: Optional[int] = None):
        self.replies: Dict[str, Reply] = dict(replies or {})
        self.default = default
        self.calls: List[ChatRequest] = []
        self.state: Dict[str, str] = {}
        self.effects: Dict[str, str] = {}
        self.events: List[Tuple[str, str, Any]] = []  # (kind, message, level/fields/fraction)
        self.costs: List[Tuple[str, int]] = []
        self.spend = Spend()
        self.budget = budget_remaining
        self._previous: Any = None

    def install(self) -> "FakeHost":
        self._previous = _host.install(self)
        return self

    def uninstall(self) -> None:
        _host.install(self._previous)

    def __enter__(self) -> "FakeHost":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def logs(self, level: Optional[str] = None) -> List[str]:
        return [m for k, m, lv in self.events if k == "log" and (level is None or lv[0] == level)]

    # models
    def chat(self, request: ChatRequest) -> ChatResponse:
        self.calls.append(request.copy())
        reply = self.replies.get(request.model, self.default)
        if reply is None:
            raise ModelError("invalid_request", f"no fake reply for model {request.model!r}")
        if callable(reply) and not isinstance(reply, ModelError):
            reply = reply(request)
        if isinstance(reply, ModelError):
            raise reply
        if isinstance(reply, str):
            reply = ChatResponse(content=reply, model=request.model, provider="fake",
                                 usage=Usage(10, 10, 0), cost_micros=1)
        self.spend.calls += 1
        self.spend.cost_micros += reply.cost_micros
        self.spend.input_tokens += reply.usage.input_tokens
        self.spend.output_tokens += reply.usage.output_tokens
        return reply

    def chat_batch(self, requests: List[ChatRequest]) -> List[Any]:
        out: List[Any] = []
        for r in requests:
            try:
                out.append(self.chat(r))
            except ModelError as e:
                out.append(e)
        return out

    def embed(self, model: str, inputs: List[str]) -> EmbedResponse:
        return EmbedResponse(vectors=[[float(len(t))] for t in inputs], model=model,
                             provider="fake")

    # state: the host's key rules, so a test catches a key the host would refuse
    def _key(self, key: str) -> str:
        if not key or len(key.encode()) > 512:
            raise StateError("invalid_key", f"key must be 1 to 512 bytes, got {len(key)}")
        return key

    def state_get(self, key: str) -> Optional[str]:
        return self.state.get(self._key(key))

    def state_set(self, key: str, value: str, ttl_ms: Optional[int]) -> None:
        self.state[self._key(key)] = value

    def state_delete(self, key: str) -> bool:
        return self.state.pop(self._key(key), None) is not None

    def state_list_keys(self, prefix: str, limit: int) -> List[str]:
        return sorted(k for k in self.state if k.startswith(prefix))[:limit]

    def state_cas(self, key: str, expected: Optional[str], value: str) -> bool:
        if self.state.get(self._key(key)) != expected:
            return False
        self.state[key] = value
        return True

    # effects
    def effect_begin(self, key: str) -> Optional[str]:
        return self.effects.get(key)

    def effect_commit(self, key: str, outcome: str) -> None:
        self.effects.setdefault(key, outcome)

    # events
    def progress(self, message: str, fraction: Optional[float]) -> None:
        self.events.append(("progress", message, fraction))

    def log(self, level: str, message: str, fields: List[Tuple[str, str]]) -> None:
        self.events.append(("log", message, (level, dict(fields))))

    # usage
    def report_cost(self, description: str, cost_micros: int) -> Optional[str]:
        if self.budget is not None and cost_micros > self.budget:
            return f"{self.budget} µ$ left"
        self.costs.append((description, cost_micros))
        self.spend.cost_micros += cost_micros
        if self.budget is not None:
            self.budget -= cost_micros
        return None

    def job_spend(self) -> Spend:
        return Spend(**vars(self.spend))

    def budget_remaining(self) -> Optional[int]:
        return self.budget
