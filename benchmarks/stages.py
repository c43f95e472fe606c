"""Time every stage of the main job: `fcagent distill --preset quick`, from an empty run folder.

The target is under 10 minutes end to end on a 2-core CPU. TRL's defaults vs fcagent's training
settings on the same pairs are compared by `benchmarks.dpo_throughput` (here on the pairs this run
exported, when `--compare-trl` is given).

    python -m benchmarks.stages [--task bfcl:simple_python] [--out DIR] [--compare-trl]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def _shown(folder: Path) -> str:
    """The run folder as committed results may hold it: relative to the working directory, or its name
    alone (a temporary folder), never an absolute path."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return folder.name


def run(task: str = "bfcl:simple_python", out: str | Path | None = None, compare_trl: bool = False) -> dict[str, Any]:
    from fcagent.pipeline.distill import distill

    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="fcagent-stages-bench-"))
    if (folder / "timings.json").exists():
        raise SystemExit(f"{folder} holds an earlier run; the benchmark needs an empty folder")
    started = time.perf_counter()
    report = distill(task=task, preset="quick", out=folder, log=lambda line: print(line, flush=True))
    total = time.perf_counter() - started
    result: dict[str, Any] = {"task": task, "preset": "quick", "total_seconds": round(total, 1),
                              "under_10_minutes": total < 600,
                              "stages": json.loads((folder / "timings.json").read_text()),
                              "accuracy": {k: v["accuracy"] for k, v in report["models"].items()},
                              "n_problems": report["n_problems"], "folder": _shown(folder)}
    if compare_trl:
        from benchmarks import dpo_throughput

        result["trl_defaults_vs_fcagent"] = dpo_throughput.run(folder / "data", steps=4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="bfcl:simple_python")
    parser.add_argument("--out", default=None)
    parser.add_argument("--compare-trl", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.task, args.out, args.compare_trl), indent=2))


if __name__ == "__main__":
    main()
