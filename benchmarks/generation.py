"""Candidate generation: fcagent's local model vs raw `generate` vs llama-cpp-python, same prompts.

Harvesting and replay sample K candidates per context. On the same BFCL prompts (the student's real
prompt text) and the same sampling settings this measures completion tokens/s for:

- `fcagent_batched`: one `LocalChatModel` call with n=K (one prefill, its KV cache repeated K times);
- `fcagent_sequential`: K calls with n=1 (the prompt cache makes calls 2..K skip the prefill);
- `raw_generate`: `hf_model.generate(num_return_sequences=K)` on the same ids (no framework: the
  overhead ratio of LangChain callbacks, rendering and parsing);
- `fcagent_concurrent`: the P prompts in flight from P threads, n=K each, combined into one batch;
- `llama_cpp_runtime_batched` / `llama_cpp_runtime_concurrent`: the same two calls on fcagent's
  llama.cpp runtime (`bundled:smollm2-135m?runtime=llama.cpp`: the same chat model, its GGUF decoded
  by llama.cpp as batched sequences);
- `llama_cpp`: llama-cpp-python on the same GGUF file, K sequential completions (its single-stream
  rate: what a user who runs the model with llama.cpp gets). Its AMX path segfaults on this CPU
  (llama.cpp issue #20824), so the model loads with `use_extra_bufts=False`, as fcagent's runtime does.

The llama.cpp rows are skipped, with the reason, when llama-cpp-python is not installed.

    python -m benchmarks.generation [--prompts 6 --k 4 --max-new 48 --out benchmarks/generation.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _prompts(n: int) -> list[list]:
    """The first step's messages of `n` BFCL problems, as the graph's text protocol builds them."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from fcagent.agent.prompting import render_system_prompt, tool_schemas
    from fcagent.tasks import get_task

    task = get_task("bfcl:simple_python")
    out = []
    for p in task.load(split="test", limit=n):
        schemas = tool_schemas(task.tools_for(p))
        system = render_system_prompt(schemas, instructions=task.instructions, examples=task.examples())
        out.append([SystemMessage(system), HumanMessage(p.question)])
    return out


@contextlib.contextmanager
def _no_extra_buffer_types(llama_cpp: Any):
    """llama.cpp's CPU 'extra' buffer types (AMX repacking) crash on this CPU: load without them."""
    original = llama_cpp.llama_model_default_params

    def patched():
        params = original()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    llama_cpp.llama_model_default_params = patched
    try:
        yield
    finally:
        llama_cpp.llama_model_default_params = original


def _llama_cpp(texts: list[str], k: int, max_new: int, temperature: float, threads: int) -> dict[str, Any]:
    try:
        import llama_cpp
    except ImportError as exc:
        return {"skipped": f"llama-cpp-python is not installed ({exc}); `pip install 'fcagent[llama-cpp]'` builds "
                           "it from source (~4 min on 2 cores)"}
    from fcagent.models.bundled import bundled_gguf_path

    with _no_extra_buffer_types(llama_cpp.llama_cpp):
        llm = llama_cpp.Llama(model_path=str(bundled_gguf_path()), n_ctx=2048, n_threads=threads,
                              n_threads_batch=threads, verbose=False, seed=0)
    llm(texts[0], max_tokens=4)  # warm-up
    tokens = completions = 0
    started = time.perf_counter()
    for text in texts:
        for _ in range(k):
            out = llm(text, max_tokens=max_new, temperature=temperature, top_p=1.0)
            tokens += out["usage"]["completion_tokens"]
            completions += 1
    seconds = time.perf_counter() - started
    return {"completions": completions, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_second": round(tokens / seconds, 1), "completions_per_second": round(completions / seconds, 3),
            "version": llama_cpp.__version__}


def run(prompts: int = 6, k: int = 4, max_new: int = 48, temperature: float = 0.8,
        with_llama_cpp: bool = True) -> dict[str, Any]:
    import torch

    from fcagent.models.loading import load_chat_model

    chat = load_chat_model("bundled:smollm2-135m", max_new_tokens=max_new, temperature=temperature,
                           stop_at_call_end=False, stop_sequences=[])
    cases = _prompts(prompts)
    texts = [chat.render(messages) for messages in cases]
    results: dict[str, Any] = {"prompts": prompts, "k": k, "max_new_tokens": max_new, "temperature": temperature,
                               "mean_prompt_tokens": round(sum(len(chat.tokenizer(t)["input_ids"]) for t in texts) / len(texts)),
                               "threads": torch.get_num_threads()}

    def tally(name: str, fn, model=chat) -> None:
        model.clear_prompt_cache()
        torch.manual_seed(0)
        started = time.perf_counter()
        tokens, completions = fn()
        seconds = time.perf_counter() - started
        results[name] = {"completions": completions, "tokens": tokens, "seconds": round(seconds, 2),
                         "tokens_per_second": round(tokens / seconds, 1),
                         "completions_per_second": round(completions / seconds, 3)}
        print(name, json.dumps(results[name]), flush=True)

    def usage(result) -> tuple[int, int]:
        gens = result.generations[0]
        return sum(g.message.usage_metadata["output_tokens"] for g in gens), len(gens)

    chat.generate([cases[0]])  # warm-up

    def batched(model=chat):
        t = c = 0
        for messages in cases:
            a, b = usage(model.generate([messages], n=k))
            t, c = t + a, c + b
        return t, c

    def sequential():
        t = c = 0
        for messages in cases:
            for _ in range(k):
                a, b = usage(chat.generate([messages], n=1))
                t, c = t + a, c + b
        return t, c

    def raw():
        t = c = 0
        eos = chat.tokenizer.eos_token_id
        for text in texts:
            ids = chat.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                out = chat.hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                             temperature=temperature, top_p=1.0, max_new_tokens=max_new,
                                             num_return_sequences=k, pad_token_id=eos)
            for row in out[:, ids.shape[1]:].tolist():
                t += next((i for i, tok in enumerate(row) if tok == eos), len(row))
                c += 1
        return t, c

    def concurrent(model=chat):
        # A new instance sharing the weights: model_copy() would share the 8-row queue as well.
        fields = {name: getattr(model, name) for name in type(model).model_fields}
        wide = type(model)(**fields | {"max_batch_rows": len(cases) * k})
        with ThreadPoolExecutor(max_workers=len(cases)) as pool:
            parts = list(pool.map(lambda messages: usage(wide.generate([messages], n=k)), cases))
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    tally("fcagent_batched", batched)
    tally("fcagent_sequential", sequential)
    tally("raw_generate", raw)
    tally("fcagent_concurrent", concurrent)
    rate = {name: results[name]["tokens_per_second"] for name in
            ("fcagent_batched", "fcagent_sequential", "raw_generate", "fcagent_concurrent")}
    results["batched_over_sequential"] = round(rate["fcagent_batched"] / rate["fcagent_sequential"], 2)
    results["fcagent_batched_over_raw_generate"] = round(rate["fcagent_batched"] / rate["raw_generate"], 2)
    results["concurrent_over_batched"] = round(rate["fcagent_concurrent"] / rate["fcagent_batched"], 2)
    if not with_llama_cpp:
        results["llama_cpp"] = {"skipped": "with_llama_cpp=False"}
        return results
    results["llama_cpp"] = _llama_cpp(texts, k, max_new, temperature, torch.get_num_threads())
    print("llama_cpp", json.dumps(results["llama_cpp"]), flush=True)
    if "skipped" in results["llama_cpp"]:
        return results
    gguf_chat = load_chat_model("bundled:smollm2-135m?runtime=llama.cpp", max_new_tokens=max_new,
                                temperature=temperature, stop_at_call_end=False, stop_sequences=[])
    assert [gguf_chat.render(m) for m in cases] == texts  # the same prompts, token for token
    gguf_chat.generate([cases[0]])  # warm-up
    tally("llama_cpp_runtime_batched", lambda: batched(gguf_chat), gguf_chat)
    tally("llama_cpp_runtime_concurrent", lambda: concurrent(gguf_chat), gguf_chat)
    single = results["llama_cpp"]["tokens_per_second"]
    rate |= {name: results[name]["tokens_per_second"] for name in
             ("llama_cpp_runtime_batched", "llama_cpp_runtime_concurrent")}
    best_transformers = max(rate["fcagent_batched"], rate["fcagent_concurrent"])
    best_llama = max(rate["llama_cpp_runtime_batched"], rate["llama_cpp_runtime_concurrent"])
    results["harvest_over_llama_cpp_single_stream"] = round(best_transformers / single, 2)
    results["llama_cpp_runtime_over_transformers_batched"] = round(
        rate["llama_cpp_runtime_batched"] / rate["fcagent_batched"], 2)
    results["llama_cpp_runtime_over_transformers_concurrent"] = round(
        rate["llama_cpp_runtime_concurrent"] / rate["fcagent_concurrent"], 2)
    results["llama_cpp_runtime_over_transformers_best"] = round(best_llama / best_transformers, 2)
    results["llama_cpp_runtime_over_raw_llama_cpp"] = round(best_llama / single, 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new", type=int, default=48)
    parser.add_argument("--out", default=None, help="Also write the results here (JSON).")
    args = parser.parse_args()
    text = json.dumps(run(args.prompts, args.k, args.max_new), indent=2)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
