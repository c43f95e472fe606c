"""DPO training throughput: fcagent's settings vs TRL's defaults on the same pairs, same process.

Both train the bundled SmolLM2-135M with LoRA r=16 for the same number of steps on the same pairs;
tokens/s counts the policy's prompt+chosen and prompt+rejected tokens per step. The machine's matmul
ceiling (fp32 and bf16, 2 threads) is measured alongside, and the model's ideal rate at that ceiling
(6 x params FLOPs per token for forward+backward) is reported as the fraction reached.

    python -m benchmarks.dpo_throughput --pairs PAIRS_DIR [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def matmul_tflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e12


def make_pairs(out: Path) -> Path:
    """A small, fixed pair set from the reference teacher and deliberately broken rejections (BFCL)."""
    from fcagent.agent.testing import ScriptedChatModel
    from fcagent.data.export import export_preference_pairs
    from fcagent.pipeline.harvest import harvest

    db = out / "pairs.db"
    harvest(task="bfcl:simple_python", teacher="reference", limit=24, store=db)
    bad = ScriptedChatModel(native=False, responses=['{"name": "unknown_function", "arguments": {}}'])
    harvest(task="bfcl:simple_python", teacher="broken", model=bad, limit=24, store=db, role="student")
    export_preference_pairs(db, out / "pairs")
    return out / "pairs"


def run(pairs: Path | None, steps: int) -> dict:
    from fcagent.training.settings import TrainSettings
    from fcagent.training.train import train

    work = Path(tempfile.mkdtemp(prefix="fcagent-dpo-bench-"))
    pairs = pairs or make_pairs(work)
    result: dict = {"ceiling_tflops": {"fp32": matmul_tflops(torch.float32), "bf16": matmul_tflops(torch.bfloat16)}}
    params = 134_515_008
    for name, settings in {
        "trl_defaults": TrainSettings(method="dpo", max_steps=steps, batch_size=2, trl_defaults=True),
        "fcagent": TrainSettings(method="dpo", max_steps=steps, batch_size=2),
    }.items():
        r = train(pairs, "bundled:smollm2-135m", work / name, settings=settings)
        result[name] = {"seconds": round(r.seconds, 2), "s_per_step": round(r.seconds / r.steps, 2),
                        "tokens_per_second": round(r.tokens_per_second, 1)}
    result["speedup"] = result["fcagent"]["tokens_per_second"] / result["trl_defaults"]["tokens_per_second"]
    for key, ceiling in result["ceiling_tflops"].items():
        ideal = ceiling * 1e12 / (6 * params)
        result[f"fcagent_fraction_of_{key}_ceiling"] = result["fcagent"]["tokens_per_second"] / ideal
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    print(json.dumps(run(args.pairs, args.steps), indent=2))


if __name__ == "__main__":
    main()
