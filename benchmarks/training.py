"""Training speed, one lever at a time, on the same rows: TRL's defaults, fcagent's previous path, each
lever alone, and all of them together.

Data: the reference teacher's chains on ProntoQA train problems, exported four ways (a row per step or a
row per chain; the teacher's prompt with worked examples or the compact student prompt), and preference
pairs against deliberately broken first steps. Every configuration trains the bundled SmolLM2-135M with
LoRA r=16 for a few steps in a process of its own (so its peak memory is its own); the first step is
not timed. Reported per configuration: seconds per step, the extrapolated seconds for one epoch over
its rows, tokens/s (the tokens of the rows it processed), pairs/s for DPO, peak RSS, and tokens/s as a
fraction of the bf16 ceiling of this CPU (6·N FLOPs per token at the measured bf16 matmul rate).

    python -m benchmarks.training [--problems 40] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARAMS = 134_515_008

# Every lever off: fcagent's path before this work (TRL's forward, fp32, no grouping).
_OFF = {"base_dtype": "float32", "group_by_length": False, "compact_head": False, "prefix_sharing": False}
SFT_CONFIGS = {
    "TRL defaults (per-step rows, teacher prompt, fp32, checkpointing)": ("steps_examples", {"trl_defaults": True}),
    "fcagent before (per-step rows, teacher prompt, fp32)": ("steps_examples", {**_OFF}),
    "+ whole-chain rows": ("chains_examples", {**_OFF}),
    "+ compact prompt": ("steps_compact", {**_OFF}),
    "+ bf16 frozen weights": ("steps_examples", {**_OFF, "base_dtype": "bfloat16"}),
    "+ length-grouped batches": ("steps_examples", {**_OFF, "group_by_length": True}),
    "+ compact LM head": ("steps_examples", {**_OFF, "compact_head": True}),
    "all levers (fcagent now)": ("chains_compact", {"base_dtype": "bfloat16", "group_by_length": True, "compact_head": True}),
}
DPO_CONFIGS = {
    "TRL defaults (fp32, checkpointing)": ("pairs_examples", {"trl_defaults": True}),
    "fcagent before (fp32, TRL's forward)": ("pairs_examples", {**_OFF}),
    "+ prefix-shared forward (and compact head)": ("pairs_examples", {**_OFF, "prefix_sharing": True}),
    "+ bf16 frozen weights": ("pairs_examples", {**_OFF, "base_dtype": "bfloat16"}),
    "+ compact prompt": ("pairs_compact", {**_OFF}),
    "all levers (fcagent now)": ("pairs_compact", {"base_dtype": "bfloat16", "prefix_sharing": True}),
}


def bf16_ceiling_tokens_per_second() -> float:
    import torch

    n = 2048
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    times = []
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n**3 / sorted(times)[2] / (6 * PARAMS)


def make_data(work: Path, problems: int) -> dict[str, Path]:
    from fcagent.agent.testing import ScriptedChatModel
    from fcagent.data.export import export_preference_pairs, export_sft
    from fcagent.pipeline.harvest import harvest

    db = work / "traces.db"
    harvest(task="logic:prontoqa", teacher="reference", limit=problems, store=db)
    broken = ScriptedChatModel(native=False, responses=['{"name": "rules_about", "arguments": {"category": "nothing"}}'])
    harvest(task="logic:prontoqa", teacher="broken", model=broken, limit=problems, store=db, role="student")
    folders = {}
    for rows in ("steps", "chains"):
        for style, name in (("as_recorded", "examples"), ("compact", "compact")):
            folder = work / f"{rows}_{name}"
            export_sft(db, folder, sft_rows="chain" if rows == "chains" else "step", prompt_style=style)
            folders[f"{rows}_{name}"] = folder
    for style, name in (("as_recorded", "examples"), ("compact", "compact")):
        folder = work / f"pairs_{name}"
        export_preference_pairs(db, folder, prompt_style=style, level="both")
        folders[f"pairs_{name}"] = folder
    return folders


class _StepTimes:
    def __new__(cls):
        from transformers import TrainerCallback

        class Times(TrainerCallback):
            def __init__(self) -> None:
                self.starts: list[float] = []
                self.ends: list[float] = []

            def on_step_begin(self, args, state, control, **kw):
                self.starts.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                self.ends.append(time.perf_counter())

        return Times()


def one(spec: dict) -> dict:
    """Runs in its own process: trains `steps` steps of one configuration and measures it."""
    import importlib

    from fcagent.training.settings import TrainSettings
    from fcagent.training.train import train

    train_module = importlib.import_module("fcagent.training.train")  # the module (the package exports the function)

    timer = _StepTimes()
    original_fit = train_module._fit

    def fit(*args, **kwargs):  # time each optimizer step from inside the trainer
        import transformers

        original_init = transformers.Trainer.__init__

        def init(self, *a, **kw):
            kw["callbacks"] = [*(kw.get("callbacks") or []), timer]
            original_init(self, *a, **kw)

        transformers.Trainer.__init__ = init
        try:
            return original_fit(*args, **kwargs)
        finally:
            transformers.Trainer.__init__ = original_init

    train_module._fit = fit
    settings = TrainSettings(method=spec["method"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
                             gradient_accumulation_steps=1, **spec["levers"])
    result = train(spec["data"], "bundled:smollm2-135m", spec["out"], settings=settings)
    manifest = json.loads((Path(spec["out"]) / "fcagent_run.json").read_text())
    step_s = [e - s for s, e in zip(timer.starts, timer.ends)][1:] or [result.seconds / max(result.steps, 1)]
    per_step = sum(step_s) / len(step_s)
    rows, tokens = manifest["data"]["rows"], manifest["data"]["tokens"]
    steps_per_epoch = math.ceil(rows / spec["batch"])
    return {"s_per_step": round(per_step, 2), "rows": rows, "tokens_per_epoch": tokens,
            "s_per_epoch": round(per_step * steps_per_epoch, 1), "tokens_per_second": round(tokens / (per_step * steps_per_epoch), 1),
            "pairs_per_second": round(spec["batch"] / per_step, 3) if spec["method"] != "sft" else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
            "base_dtype": manifest["base_dtype"], "prompt_style": manifest["prompt_style"]}


def run(problems: int = 40, steps: int = 4) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fcagent-train-bench-"))
    data = make_data(work, problems)
    ceiling = bf16_ceiling_tokens_per_second()
    results: dict = {"problems": problems, "steps": steps, "bf16_ceiling_tokens_per_second": round(ceiling),
                     "sft": {}, "dpo": {}}
    for section, configs, method, batch in (("sft", SFT_CONFIGS, "sft", 4), ("dpo", DPO_CONFIGS, "dpo", 2)):
        for name, (dataset, levers) in configs.items():
            spec = {"method": method, "steps": steps, "batch": batch, "levers": levers, "data": str(data[dataset]),
                    "out": str(work / "runs" / f"{section}-{len(results[section])}")}
            proc = subprocess.run([sys.executable, "-m", "benchmarks.training", "--one", json.dumps(spec)],
                                  capture_output=True, text=True, env={**os.environ, "FCAGENT_PROGRESS": "0"})
            if proc.returncode != 0:
                results[section][name] = {"error": proc.stderr.strip().splitlines()[-1][:300]}
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["fraction_of_bf16_ceiling"] = round(r["tokens_per_second"] / ceiling, 3)
            results[section][name] = r
            print(section, name, r, flush=True)
    for section, base in (("sft", "TRL defaults (per-step rows, teacher prompt, fp32, checkpointing)"),
                          ("dpo", "TRL defaults (fp32, checkpointing)")):
        ref = results[section].get(base, {})
        for r in results[section].values():
            if "s_per_epoch" in r and "s_per_epoch" in ref:
                r["epoch_speedup_vs_trl_defaults"] = round(ref["s_per_epoch"] / r["s_per_epoch"], 2)
            if r.get("pairs_per_second") and ref.get("pairs_per_second"):
                r["pairs_per_second_vs_trl_defaults"] = round(r["pairs_per_second"] / ref["pairs_per_second"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    out = run(args.problems, args.steps)
    (Path(__file__).parent / "training.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
