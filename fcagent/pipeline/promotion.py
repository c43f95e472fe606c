"""Deciding whether a new student replaces the one in production, and replacing it.

* `Gate`: conditions on the new student's figures on held-out traffic (`step_agreement>=0.9`,
  `escalation_rate<=0.1`, ...), every one of which must hold.
* `not_worse`: the new student is not significantly worse than the baseline (McNemar's exact test on
  the same held-out steps, p < 0.05 where the baseline wins).
* `promote`: the production name (a symbolic link, `runs/prod`) points at the new run folder, switched
  atomically (a reader sees the old run or the new one, never neither), and the switch is recorded
  (`<name>.promotions.jsonl`). `fcagent serve --student runs/prod` follows it.
* `Watermark`: what the labelled traffic was when a run trained, so the next run trains only on news.
"""

from __future__ import annotations

import json
import operator
import os
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fcagent.core.errors import UserError

__all__ = ["Gate", "GateResult", "not_worse", "promote", "Watermark", "GATE_EXIT_CODE"]

GATE_EXIT_CODE = 3  # what `fcagent distill --store` exits with when the new student is not promoted
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|>|<)\s*([0-9]*\.?[0-9]+)\s*$")
# The figures a gate can test (a rate's value is its `rate`).
FIGURES = ("step_agreement", "first_call_agreement", "episode_agreement", "repeats_rejected", "invalid_call_rate",
           "escalation_rate")


class Condition(BaseModel):
    figure: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.figure}{self.op}{self.value:g}"


class GateResult(BaseModel):
    passed: bool
    lines: list[str]  # one per condition: the figure, its value, and whether it held


class Gate(BaseModel):
    conditions: list[Condition]

    @classmethod
    def parse(cls, texts: list[str] | str | None) -> Gate:
        """`'step_agreement>=0.9'`, several joined by commas or given as a list."""
        items = [texts] if isinstance(texts, str) else list(texts or [])
        conditions = []
        for item in (part for text in items for part in text.split(",") if part.strip()):
            m = _CONDITION.match(item)
            if m is None:
                raise UserError(f"`--gate {item.strip()}` is not FIGURE OP NUMBER (e.g. step_agreement>=0.9)")
            figure, op, value = m.groups()
            if figure not in FIGURES:
                raise UserError(f"`--gate {item.strip()}`: {figure} is not a figure; choose from {', '.join(FIGURES)}")
            conditions.append(Condition(figure=figure, op=op, value=float(value)))
        return cls(conditions=conditions)

    def check(self, figures: dict[str, Any]) -> GateResult:
        lines, passed = [], True
        for c in self.conditions:
            raw = figures.get(c.figure)
            value = raw.get("rate") if isinstance(raw, dict) else raw
            held = value is not None and _OPS[c.op](value, c.value)
            passed &= held
            shown = "none" if value is None else f"{value:.3f}"
            lines.append(f"{c.figure} = {shown} {'meets' if held else 'falls short of'} {c.op} {c.value:g}")
        return GateResult(passed=passed, lines=lines)


def not_worse(test: dict[str, Any], *, alpha: float = 0.05) -> tuple[bool, str]:
    """From McNemar's test of `new vs baseline` (only_a: steps only the new one gets right): the new
    student is not significantly worse."""
    worse = test["only_b"] > test["only_a"] and test["p_value"] < alpha
    return (not worse, f"{test['only_a']} steps only the new student gets right, {test['only_b']} only the baseline "
                       f"(McNemar p = {test['p_value']:.3g}{'' if not worse else f' < {alpha:g}: significantly worse'})")


def promote(run_dir: str | Path, name: str | Path, *, reason: str = "") -> Path:
    """Point `name` (a symbolic link) at `run_dir`, atomically, and record it; returns the link."""
    run_dir, link = Path(run_dir).resolve(), Path(name)
    if link.exists() and not link.is_symlink():
        raise UserError(f"`--promote {link}` exists and is not a link fcagent made; choose another name")
    link.parent.mkdir(parents=True, exist_ok=True)
    previous = os.path.realpath(link) if link.is_symlink() else None
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir, target_is_directory=True)
    os.replace(tmp, link)  # rename(2) over the old link: atomic
    with link.with_name(f"{link.name}.promotions.jsonl").open("a") as f:
        f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": str(run_dir),
                            "previous": previous, "reason": reason}) + "\n")
    return link


class Watermark(BaseModel):
    """The labelled traffic a run trained on: the episodes and labels there were, and the newest label."""

    episodes: int
    labels: int
    newest_label_at: float | None

    @classmethod
    def of(cls, store: Any) -> Watermark:
        labels, newest = store.label_watermark()
        return cls(episodes=store.count("episodes"), labels=labels, newest_label_at=newest)

    def news_since(self, earlier: Watermark | None) -> bool:
        return earlier is None or (self.labels, self.newest_label_at or 0) != (earlier.labels, earlier.newest_label_at or 0)
