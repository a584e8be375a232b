"""A run survives a batch that does not fit: an out-of-memory error in the middle of decoding halves
the batch and the run goes on from the samples it stored, with the same outputs as a run that never
ran out (float32). And batch_size=auto sizes the batch from the memory left."""

from __future__ import annotations

import gc
import json
import math
import weakref

import pandas as pd
import pytest
import torch
from conftest import PROMPTS
from test_engine import MAX_NEW
from test_run import config, read_samples
from torch.utils._python_dispatch import TorchDispatchMode

from blendin import memory
from blendin.prompts import Prompt
from blendin.run import execute, run_dir, shared_pair


def _same_records(a: list[dict], b: list[dict]) -> bool:
    """The same outputs, counts and texts; probabilities equal up to float32 rounding (kernels sum in
    another order for another batch shape)."""

    def same(x, y):
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6)
        return x == y

    return len(a) == len(b) and all(x.keys() == y.keys() and all(same(x[k], y[k]) for k in x) for x, y in zip(a, b))


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
    assert _same_records(_without_times(read_samples(run_dir(cfg))), _without_times(read_samples(run_dir(plain))))
    # the same tokens; probabilities equal up to float32 rounding (kernels sum in another order for
    # another batch shape, so a batch of 2 and a batch of 4 may differ in the last digits)
    pd.testing.assert_frame_equal(
        pd.read_parquet(run_dir(cfg) / "tokens.parquet"),
        pd.read_parquet(run_dir(plain) / "tokens.parquet"),
        check_exact=False,
        rtol=1e-4,
        atol=1e-5,
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
    # prefill: 6 hidden (64) + 3 intermediate (128) values of 4 bytes per prompt token, and the masks
    columns = 50 + 2 * (100 + 64)
    row = sum(
        p * columns + 16 * m.vocab_size + 4 * (6 * 64 + 3 * 128) * 50 + 2 * 50 * columns
        for p, m in zip(per_token, models)
    )
    assert memory.auto_batch_size(models, 50, 100, free_bytes=10 * row) == 8  # 80% of 10 rows
    assert memory.auto_batch_size(models, 50, 100, free_bytes=row // 2) == 1
    assert memory.auto_batch_size(models, 50, 100) == memory.CPU_BATCH  # a CPU: no free-memory figure
    metrics = execute(cfg)
    assert metrics["n_samples"] == 3 and metrics["batch_size"] == memory.CPU_BATCH


def test_out_of_memory_as_libraries_word_it():
    """cuBLAS and the CUDA runtime report a failed allocation in their own words, sometimes wrapped."""
    assert memory.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert memory.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    wrapped = RuntimeError("graph capture failed")
    wrapped.__cause__ = RuntimeError("cudaErrorMemoryAllocation")
    assert memory.is_out_of_memory(wrapped)
    assert not memory.is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))
    assert not memory.is_out_of_memory(ValueError("out of memory"))  # not an error a device raises


# ---- caches are freed when dropped, and rows leaving or joining never hold the KV twice ----------


@pytest.fixture
def tracked_caches(monkeypatch):
    """Weak references to every KV cache and KV buffer made while the test runs."""
    from blendin import streams

    made = {"caches": [], "buffers": []}
    init, lazy = streams.RowCache.__init__, streams.RowLayer.lazy_initialization

    def tracked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made["caches"].append(weakref.ref(self))

    def tracked_lazy(self, key_states, value_states):
        lazy(self, key_states, value_states)
        made["buffers"] += [weakref.ref(self._k), weakref.ref(self._v)]

    monkeypatch.setattr(streams.RowCache, "__init__", tracked_init)
    monkeypatch.setattr(streams.RowLayer, "lazy_initialization", tracked_lazy)
    return made


@pytest.mark.parametrize("method", ["nudging", "nudging_words"])
def test_a_finished_generate_leaves_nothing_for_the_garbage_collector(method, tracked_caches, cross_pair):
    """With the cyclic collector off, every KV cache and buffer is gone when `generate` returns: a cache
    that only the collector frees holds GPU memory across admissions, runs and bench rows."""
    decoder = cross_pair.decoder({"name": method})
    gc.collect()
    gc.disable()
    try:
        decoder.generate([Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW, batch_size=2, stop_strings=["e"])
        alive = [r for r in tracked_caches["caches"] + tracked_caches["buffers"] if r() is not None]
    finally:
        gc.enable()
    assert tracked_caches["caches"] and tracked_caches["buffers"], "the decode made caches"
    assert not alive, f"{len(alive)} caches or KV buffers outlived generate without the garbage collector"


class _PeakBytes(TorchDispatchMode):
    """The most bytes held at once during a block: what `held()` reports (the cache's buffers, old views
    included) plus every tensor made inside the block that is still alive."""

    def __init__(self, held):
        super().__init__()
        self.held, self.made, self.peak = held, {}, held()[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.made:
                key = t.untyped_storage().data_ptr()
                self.made[key] = t.untyped_storage().nbytes()
                weakref.finalize(t, self.made.pop, key, None)
        held = self.held()
        self.peak = max(self.peak, held[0] + sum(b for k, b in self.made.items() if k not in held[1]))
        return out


def _held(stream):
    """Bytes of the distinct storages a stream's cache layers hold (any tensor attribute), and their addresses."""
    storages = {}
    for layer in stream.cache.layers:
        for value in vars(layer).values():
            if isinstance(value, torch.Tensor):
                storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(storages.values()), set(storages)


def test_rows_leaving_never_hold_the_kv_twice(monkeypatch, cross_pair):
    """When rows leave the batch the cache is re-laid out: at no moment may it hold more than its KV and
    one layer's worth beside it (an old copy of every layer alongside the new one would need a free
    KV's worth of memory, and the first row to finish in a batch sized to fit would run out)."""
    from blendin import streams

    ratios = []
    select = streams.CachedStream.select

    def measured(self, keep):
        total, _ = _held(self)
        with _PeakBytes(lambda: _held(self)) as mode:
            select(self, keep)
        layers = len(self.cache.layers)
        ratios.append((mode.peak - total) / (total / layers))  # extra bytes, in layers' worth of KV

    monkeypatch.setattr(streams.CachedStream, "select", measured)
    cross_pair.decoder({"name": "nudging"}).generate(
        [Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW, batch_size=3, stop_strings=["e"]
    )
    assert ratios, "rows left the batch"
    assert max(ratios) <= 1.0, ratios
