"""The benchmarks still run against today's API (tiny sizes; no timing is asserted here: performance
claims come from full benchmark runs, recorded in benchmarks/*.json)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_generation_benchmark_runs_every_path(smol_dir):
    import importlib.util

    from benchmarks import generation

    with_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    result = generation.run(prompts=2, k=2, max_new=4, with_llama_cpp=with_llama_cpp)
    names = ["fcagent_batched", "fcagent_sequential", "raw_generate", "fcagent_concurrent"]
    if with_llama_cpp:
        names += ["llama_cpp", "llama_cpp_runtime_batched", "llama_cpp_runtime_concurrent"]
        assert result["llama_cpp_runtime_over_raw_llama_cpp"] > 0
    for name in names:
        assert result[name]["completions"] == 4, name
        assert result[name]["tokens"] > 0, name


def test_serve_benchmark_drives_the_server_batched_and_not(smol_dir):
    import importlib.util

    from benchmarks import serve

    runtimes = ("transformers", "llama.cpp") if importlib.util.find_spec("llama_cpp") else ("transformers",)
    results = serve.run(requests=4, clients=2, max_tokens=4, runtimes=runtimes)
    for runtime in runtimes:
        result = results[runtime]
        assert result["one_client"]["requests"] == result["concurrent"]["requests"] == 4
        assert result["concurrent_unbatched"]["batches"] == 4  # batching off: one request per batch
        assert result["one_client"]["batches"] == 4  # one client: nothing to batch with
        assert result["concurrent"]["completion_tokens"] > 0
        assert result["every_request_answered"] and result["identical_across_batching"], runtime


def test_tracing_benchmark_records_every_episode_in_both_write_modes():
    from benchmarks import tracing

    result = tracing.run(rounds=1, runs=3)
    # 5 warm-up runs + 3 timed; the callbacks-only recorder drops its episodes
    assert result["episodes_recorded"] == {"fcagent": 8, "fcagent-in-run": 8, "fcagent-callbacks-only": 0}
    assert {"fcagent", "fcagent-in-run", "fcagent_writes_waited"} <= set(result["overhead_ms_per_event"])
    assert set(result["fcagent_parts_ms_per_event"]) == {"langchain_dispatch (noop)", "recorder_callbacks", "writer_thread"}


def test_shadow_benchmark_times_both_paths_and_the_student_answers_every_call(smol_dir, data_dir):
    from benchmarks import shadow

    result = shadow.run(rounds=1, requests=2, teacher_latency_s=0.01, max_new_tokens=4, data_dir=str(data_dir))
    assert result["teacher_only"]["requests"] == result["teacher_with_shadow"]["requests"] == 2
    assert result["shadow"]["submitted"] > 0 and result["shadow"]["failed"] == 0
    assert result["shadow"]["answered_in_the_end"] == result["shadow"]["submitted"]


def test_hostile_request_benchmark_gets_every_hostile_request_refused(smol_dir, data_dir):
    from benchmarks import serve_hostile

    result = serve_hostile.run(rounds=1, requests=2, max_tokens=4)
    assert result["every_hostile_request_refused"], result["hostile_statuses"]
    assert result["hostile_requests_sent"] >= 7 and result["hostile_statuses"]["2 MB body"] == [413]
