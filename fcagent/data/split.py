"""The held-out split of recorded traffic: which requests training never sees.

A task problem has its own split (`fcagent.tasks.base.split_of`). An episode of a user's own agent is
split by its *request* (`fcagent.core.records.request_key`: the first user message and the tools
offered), so a request asked word for word again falls on the same side, and a model is evaluated on
requests it never trained on. The fraction is a setting (`--test-fraction`, 0.2 by default); the split
is deterministic, so the exporter and the evaluation always agree on it.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["DEFAULT_TEST_FRACTION", "traffic_split", "split_of_row"]

DEFAULT_TEST_FRACTION = 0.2


def traffic_split(request_key: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> Literal["train", "test"]:
    """`test` for a `test_fraction` of requests, by their key (a hex digest), `train` for the rest."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in [0, 1), got {test_fraction}")
    bucket = int(request_key[:12], 16) % 10_000
    return "test" if bucket < round(test_fraction * 10_000) else "train"


def split_of_row(split: str | None, problem_id: str | None, request_key: str | None,
                 test_fraction: float = DEFAULT_TEST_FRACTION) -> str | None:
    """An episode's split: a task problem's own, else its request's, else None (nothing to split by)."""
    if split:
        return split
    if problem_id:
        from fcagent.tasks.base import split_of

        return split_of(problem_id)
    return traffic_split(request_key, test_fraction) if request_key else None
