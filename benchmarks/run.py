"""Run every benchmark and write benchmarks/results.json plus a markdown table.

    python -m benchmarks.run [--quick]

Each benchmark measures fcagent against the alternative in the same process and reports ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="Fewer repeats (a smoke run).")
    args = parser.parse_args()
    from benchmarks import dpo_throughput, export_scale, tracing

    results: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%d")}
    results["tracing"] = tracing.run(rounds=4 if args.quick else 12, runs=20 if args.quick else 40)
    results["export_scale"] = export_scale.run([2_000, 10_000] if args.quick else [10_000, 100_000])
    results["dpo_throughput"] = dpo_throughput.run(None, steps=2 if args.quick else 6)
    (HERE / "results.json").write_text(json.dumps(results, indent=2))
    t, d = results["tracing"], results["dpo_throughput"]
    lines = ["| benchmark | fcagent | alternative | ratio |", "|---|---|---|---|"]
    for peer in ("langsmith", "langfuse"):
        if peer in t["overhead_ms_per_event"]:
            lines.append(f"| tracing overhead per captured event | {t['overhead_ms_per_event']['fcagent']:.3f} ms | "
                         f"{peer} {t['overhead_ms_per_event'][peer]:.3f} ms | "
                         f"{t[f'fcagent_overhead_as_fraction_of_{peer}']:.3f}x |")
    lines.append(f"| DPO tokens/s (135M, LoRA r=16, batch 2) | {d['fcagent']['tokens_per_second']:.0f} | "
                 f"TRL defaults {d['trl_defaults']['tokens_per_second']:.0f} | {d['speedup']:.2f}x |")
    for n, e in results["export_scale"].items():
        lines.append(f"| export of {int(n):,} episodes | {e['episodes_per_second']} episodes/s, peak RSS {e['peak_rss_mb']} MB | – | – |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
