"""What the job has spent, and costs the host cannot see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import _host
from .errors import Error


@dataclass
class Spend:
    cost_micros: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0


def report_cost(description: str, cost_micros: int) -> None:
    """Record a cost the host cannot see (millionths of a US dollar); a hard budget that
    refuses it raises a permanent `Error`."""
    refused = _host.backend().report_cost(description, int(cost_micros))
    if refused is not None:
        raise Error.permanent(f"budget refused {cost_micros} µ$ for {description}: {refused}")


def job_spend() -> Spend:
    """Spend so far on this job, across its attempts."""
    return _host.backend().job_spend()


def budget_remaining() -> Optional[int]:
    """The smallest remaining hard budget for this job in µ$; None when none applies."""
    return _host.backend().budget_remaining()
