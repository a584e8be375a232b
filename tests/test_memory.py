"""A run survives a batch that does not fit: an out-of-memory error in the middle of decoding halves
the batch and the run goes on from the samples it stored, with the same outputs as a run that never
ran out (float32). And batch_size=auto sizes the batch from the memory left."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from test_run import config, read_samples

from blendin import memory
from blendin.run import execute, run_dir, shared_pair


def _without_times(samples):
    return [{k: v for k, v in s.items() if k != "gen_seconds"} for s in samples]


@pytest.mark.parametrize("method", ["nudging", "blendin"])
def test_out_of_memory_halves_the_batch_and_keeps_every_output(method, model_dirs, tmp_path):
    plain = config(
        model_dirs, tmp_path / "plain", "benchmark=gsm8k", f"method={method}", "benchmark.n=7", "batch_size=4"
    )
    expected = execute(plain)
    cfg = config(model_dirs, tmp_path / "oom", "benchmark=gsm8k", f"method={method}", "benchmark.n=7", "batch_size=4")
    base = shared_pair(cfg).model("base").model
    calls = {"n": 0, "raised": []}

    def fail_on_big_batches(module, args, kwargs):
        calls["n"] += 1
        rows = kwargs["input_ids"].shape[0]
        if rows > 2 and calls["n"] > 6:  # after some rows finished and were stored: a mid-run failure
            calls["raised"].append(rows)
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    hook = base.register_forward_pre_hook(fail_on_big_batches, with_kwargs=True)
    try:
        metrics = execute(cfg)
    finally:
        hook.remove()
    assert calls["raised"], "the test should inject an out-of-memory error"
    assert _without_times(read_samples(run_dir(cfg))) == _without_times(read_samples(run_dir(plain)))
    pd.testing.assert_frame_equal(
        pd.read_parquet(run_dir(cfg) / "tokens.parquet"), pd.read_parquet(run_dir(plain) / "tokens.parquet")
    )
    assert metrics["score"] == expected["score"] and metrics["tokens_generated"] == expected["tokens_generated"]
    sessions = json.loads((run_dir(cfg) / "identity.json").read_text())["sessions"]
    assert [s["batch_size"] for s in sessions] == [4, 2], "the halved batch is recorded as a session"
    assert sessions[1]["after"] == "out of memory" and metrics["mixed_environment"]


def test_out_of_memory_at_batch_one_is_raised(model_dirs, tmp_path):
    cfg = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=base", "benchmark.n=2", "batch_size=1")
    base = shared_pair(cfg).model("base").model

    def always(module, args, kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    hook = base.register_forward_pre_hook(always, with_kwargs=True)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            execute(cfg)
    finally:
        hook.remove()


def test_auto_batch_size_from_the_memory_left(model_dirs, tmp_path):
    cfg = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=nudging", "benchmark.n=3", "batch_size=auto")
    pair = shared_pair(cfg)
    models = [pair.model("base"), pair.model("guidance")]
    per_token = [memory.kv_bytes_per_token(m.model) for m in models]
    # the tiny models: 2 layers x 2 KV heads x 16 dims x keys and values x 4 bytes
    assert per_token == [2 * 2 * 2 * 16 * 4] * 2
    row = sum(p * (50 + 2 * (100 + 64)) + 16 * m.vocab_size for p, m in zip(per_token, models))
    assert memory.auto_batch_size(models, 50, 100, free_bytes=10 * row) == 8  # 80% of 10 rows
    assert memory.auto_batch_size(models, 50, 100, free_bytes=row // 2) == 1
    assert memory.auto_batch_size(models, 50, 100) == memory.CPU_BATCH  # a CPU: no free-memory figure
    metrics = execute(cfg)
    assert metrics["n_samples"] == 3 and metrics["batch_size"] == memory.CPU_BATCH
