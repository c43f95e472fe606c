"""Run every benchmark and write benchmarks/results.json plus a markdown table.

    python -m benchmarks.run [--quick] [--stages]

Each benchmark measures fcagent against the alternative in the same process and reports ratios.
`--stages` adds the timed `distill --preset quick` run (~8 minutes on its own).
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
    parser.add_argument("--stages", action="store_true", help="Also time `distill --preset quick` stage by stage.")
    parser.add_argument("--resume", action="store_true", help="Keep results already in results.json; run the rest.")
    args = parser.parse_args()
    from benchmarks import (
        constrained,
        dpo_throughput,
        export_scale,
        generation,
        redaction,
        serve_hostile,
        shadow,
        stages,
        store_writers,
        student_cost,
        tracing,
    )

    path = HERE / "results.json"
    results: dict = json.loads(path.read_text()) if args.resume and path.exists() else {}
    results |= {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%d")}
    plan = {
        "tracing": lambda: tracing.run(rounds=4 if args.quick else 12, runs=20 if args.quick else 40),
        "export_scale": lambda: export_scale.run([2_000, 10_000] if args.quick else [10_000, 100_000]),
        "store_writers": lambda: store_writers.run(800 if args.quick else 4000)
        | {"recorders": store_writers.run_recorders(200 if args.quick else 2000)},
        "generation": lambda: generation.run(prompts=3 if args.quick else 6, k=4, max_new=48),
        "student_cost": lambda: student_cost.run(problems=4 if args.quick else 10),
        "dpo_throughput": lambda: dpo_throughput.run(None, steps=2 if args.quick else 6),
        "constrained": lambda: constrained.run(problems=5 if args.quick else 20),
        "redaction": lambda: redaction.run(mb=0.25 if args.quick else 1.0),
        "shadow": lambda: shadow.run(rounds=1 if args.quick else 3, requests=6 if args.quick else 12),
        "serve_hostile": lambda: serve_hostile.run(rounds=1 if args.quick else 3, requests=4 if args.quick else 8),
    }
    if args.stages:
        plan["stages"] = stages.run
    for name, bench in plan.items():
        if name in results:
            print(f"{name}: kept from {path.name} (--resume)")
            continue
        results[name] = bench()
        path.write_text(json.dumps(results, indent=2))  # each result saved as soon as it exists
    t, d = results["tracing"], results["dpo_throughput"]
    lines = ["| benchmark | fcagent | alternative | ratio |", "|---|---|---|---|"]
    for peer in ("langsmith", "langfuse", "fcagent-in-run"):
        if peer in t["overhead_ms_per_event"]:
            lines.append(f"| tracing overhead per captured event | {t['overhead_ms_per_event']['fcagent']:.3f} ms | "
                         f"{peer} {t['overhead_ms_per_event'][peer]:.3f} ms | "
                         f"{t[f'fcagent_overhead_as_fraction_of_{peer}']:.3f}x |")
    if "fcagent_writes_waited" in t["overhead_ms_per_event"]:
        lines.append(f"| tracing per captured event, every write waited for (`flush()`) | "
                     f"{t['overhead_ms_per_event']['fcagent_writes_waited']:.3f} ms | fcagent-in-run "
                     f"{t['overhead_ms_per_event']['fcagent-in-run']:.3f} ms | "
                     f"{t['fcagent_writes_waited_as_fraction_of_fcagent-in-run']:.3f}x |")
    if "cpu_overhead_ms_per_event" in t:
        cpu = t["cpu_overhead_ms_per_event"]
        for peer in ("langsmith", "langfuse", "fcagent-in-run"):
            if peer in cpu:
                lines.append(f"| tracing CPU per captured event (all threads, background sends waited for) | "
                             f"{cpu['fcagent']:.3f} ms | {peer} {cpu[peer]:.3f} ms | {cpu['fcagent'] / cpu[peer]:.3f}x |")
    lines.append(f"| DPO tokens/s (135M, LoRA r=16, batch 2) | {d['fcagent']['tokens_per_second']:.0f} | "
                 f"TRL defaults {d['trl_defaults']['tokens_per_second']:.0f} | {d['speedup']:.2f}x |")
    lines.append(f"| DPO tokens/s as a fraction of the bf16 / fp32 matmul ceiling | "
                 f"{d['fcagent_fraction_of_bf16_ceiling']:.1%} / {d['fcagent_fraction_of_fp32_ceiling']:.1%} | – | – |")
    for n, e in results["export_scale"].items():
        lines.append(f"| export of {int(n):,} episodes | {e['episodes_per_second']} episodes/s, peak RSS {e['peak_rss_mb']} MB | – | – |")
    w = results["store_writers"]
    for mode in ("threads", "processes"):
        lines.append(f"| store writes, {w['writers']} {mode} vs 1 writer | {w[mode]['episodes_per_second']} episodes/s "
                     f"(all present: {w[mode]['complete']}) | 1 writer {w['single']['episodes_per_second']} episodes/s | "
                     f"{w[f'{mode}_over_single']:.2f}x |")
    rec = w.get("recorders", {})
    if "episodes_per_second" in rec.get("postgresql", {}):
        pg, lite = rec["postgresql"], rec["sqlite"]
        lines.append(f"| {rec['writers']} processes × {rec['episodes_per_writer']:,} episodes through TraceRecorder, "
                     f"PostgreSQL vs SQLite | {pg['episodes_per_second']} episodes/s (each once: {pg['exactly_once']}) "
                     f"| SQLite {lite['episodes_per_second']} episodes/s (each once: {lite['exactly_once']}) | "
                     f"{rec['postgresql_over_sqlite_episodes_per_second']:.2f}x |")
        lines.append(f"| export of those episodes (`traces export`), PostgreSQL vs SQLite | "
                     f"{pg['export_episodes_per_second']} episodes/s | SQLite {lite['export_episodes_per_second']} "
                     f"episodes/s | {rec['postgresql_over_sqlite_export_episodes_per_second']:.2f}x |")
    elif rec:
        lines.append(f"| {rec['writers']} processes through TraceRecorder into PostgreSQL | skipped: "
                     f"{rec['postgresql'].get('skipped')} | – | – |")
    g = results["generation"]
    k = g["k"]
    lines.append(f"| candidates: {k} per call (shared prefill) vs {k} sequential calls | {g['fcagent_batched']['tokens_per_second']} tok/s | "
                 f"sequential {g['fcagent_sequential']['tokens_per_second']} tok/s | {g['batched_over_sequential']:.2f}x |")
    lines.append(f"| candidates: fcagent vs raw `generate(num_return_sequences={k})` | {g['fcagent_batched']['tokens_per_second']} tok/s | "
                 f"raw {g['raw_generate']['tokens_per_second']} tok/s | {g['fcagent_batched_over_raw_generate']:.2f}x |")
    lines.append(f"| candidates: {g['prompts']} contexts in flight (one batch) vs one at a time | {g['fcagent_concurrent']['tokens_per_second']} tok/s | "
                 f"{g['fcagent_batched']['tokens_per_second']} tok/s | {g['concurrent_over_batched']:.2f}x |")
    if "tokens_per_second" in g["llama_cpp"]:
        best = max(g["fcagent_batched"]["tokens_per_second"], g["fcagent_concurrent"]["tokens_per_second"])
        lines.append(f"| harvest rate vs llama-cpp-python {g['llama_cpp']['version']} single stream (same GGUF, prompts) | "
                     f"{best} tok/s | {g['llama_cpp']['tokens_per_second']} tok/s | {g['harvest_over_llama_cpp_single_stream']:.2f}x |")
        if "llama_cpp_runtime_batched" in g:
            fast = max(g["llama_cpp_runtime_batched"]["tokens_per_second"], g["llama_cpp_runtime_concurrent"]["tokens_per_second"])
            lines.append(f"| candidates on the llama.cpp runtime (`?runtime=llama.cpp`) vs the transformers runtime, {k} per "
                         f"call / {g['prompts']} contexts in flight | {g['llama_cpp_runtime_batched']['tokens_per_second']} / "
                         f"{g['llama_cpp_runtime_concurrent']['tokens_per_second']} tok/s | "
                         f"{g['fcagent_batched']['tokens_per_second']} / {g['fcagent_concurrent']['tokens_per_second']} tok/s | "
                         f"{g['llama_cpp_runtime_over_transformers_batched']:.2f}x / "
                         f"{g['llama_cpp_runtime_over_transformers_concurrent']:.2f}x |")
            lines.append(f"| harvest rate on the llama.cpp runtime vs llama-cpp-python {g['llama_cpp']['version']} single "
                         f"stream (same GGUF, prompts) | {fast} tok/s | {g['llama_cpp']['tokens_per_second']} tok/s | "
                         f"{g['llama_cpp_runtime_over_raw_llama_cpp']:.2f}x |")
    else:
        lines.append(f"| harvest rate vs llama-cpp-python | skipped: {g['llama_cpp']['skipped']} | – | – |")
    c = results["student_cost"]
    lines.append(f"| per problem ({c['task']}): student tokens (prompt+completion), wall | "
                 f"{c['student']['prompt_tokens_per_problem']}+{c['student']['completion_tokens_per_problem']}, "
                 f"{c['student']['wall_s_per_problem']} s | teacher `{c['teacher']['spec']}` "
                 f"{c['teacher']['prompt_tokens_per_problem']}+{c['teacher']['completion_tokens_per_problem']}"
                 f"{'' if c['teacher_wall_is_a_model'] else ' (a replay: no model time)'} | "
                 f"{c['student_over_teacher_tokens']:.2f}x tokens |")
    if "constrained" in results:
        cd = results["constrained"]
        for b, m in cd["backends"].items():
            lines.append(f"| constrained decoding, {b}: grammar build per BFCL function set / mask per token "
                         f"(median, p99) | {m['grammar_build_ms_median']} ms / {m['mask_us_per_token_median']} µs, "
                         f"{m['mask_us_per_token_p99']} µs | – | – |")
            d = cd["decode"][b]
            lines.append(f"| constrained decoding, {b}: greedy decode on {cd['problems']} BFCL problems, "
                         f"replies with a known call | {d['tokens_per_second']} tok/s, {d['replies_with_a_known_call']} | "
                         f"unconstrained {cd['decode']['none']['tokens_per_second']} tok/s, "
                         f"{cd['decode']['none']['replies_with_a_known_call']} | {cd['decode_speed_vs_unconstrained'][b]:.2f}x |")
    if "redaction" in results:
        r = results["redaction"]
        lines.append(f"| redaction, worst of {len(r['fcagent_s_per_input'])} adversarial inputs of {r['size_mb']} MB | "
                     f"{r['fcagent_worst']['seconds']} s ({r['fcagent_worst']['input']}; time x"
                     f"{max(r['fcagent_growth_when_doubled'].values()):.1f} when the size doubles) | previous rules: "
                     f"~{r['previous_worst']['extrapolated_seconds_per_mb']} s per MB ({r['previous_worst']['input']}, "
                     f"time x{max(r['previous_growth_when_doubled'].values()):.1f} when doubled) | – |")
    if "shadow" in results:
        sh = results["shadow"]
        lines.append(f"| user latency p50 with a shadowing student (teacher {sh['setup']['teacher_latency_s']} s per call; "
                     f"{sh['shadow']['submitted']} calls shadowed, {sh['shadow']['dropped']} dropped) | "
                     f"{sh['teacher_with_shadow']['p50_ms']} ms | without {sh['teacher_only']['p50_ms']} ms | "
                     f"{sh['p50_ratio_with_over_without']:.3f}x |")
    if "serve_hostile" in results:
        h = results["serve_hostile"]
        lines.append(f"| a client's reply latency p50 while another sends hostile requests ({h['hostile_requests_sent']} "
                     f"sent, every one refused with a 4xx: {h['every_hostile_request_refused']}) | {h['under_attack']['p50_s']} s | "
                     f"alone {h['alone']['p50_s']} s | {h['p50_ratio_under_attack']:.3f}x |")
    if "stages" in results:
        st = results["stages"]
        lines.append(f"| `distill --preset quick` end to end | {st['total_seconds'] / 60:.1f} min "
                     f"({', '.join(f'{k} {v:.0f} s' for k, v in st['stages'].items())}) | target 10 min | – |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
