"""The engine on a CUDA device. Skipped without one (CI has none), unless BLENDIN_REQUIRE_CUDA=1 says
a GPU must be there (scripts/gpu_check.sh sets it): then a missing GPU fails the tests."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import PROMPTS
from test_engine import GUIDED, MAX_NEW, hf_greedy, rendered

from blendin.pair import Pair, pair_spec
from blendin.prompts import Prompt

REQUIRED = os.environ.get("BLENDIN_REQUIRE_CUDA") == "1"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRED, reason="needs a CUDA GPU")


def test_a_gpu_is_there():
    assert torch.cuda.is_available(), "BLENDIN_REQUIRE_CUDA=1 but torch sees no CUDA device"


def gpu_pair_of(model_dirs, kind: str, attention: str | None = None) -> Pair:
    pair = Pair(
        pair_spec(
            {
                "name": f"tiny_{kind}_gpu",
                "base": {"source": model_dirs[f"{kind}_base"]},
                "guidance": {"source": model_dirs[f"{kind}_guidance"]},
            }
        ),
        device="cuda",
        dtype="float32",
    )
    if attention:
        for role in ("base", "guidance"):
            pair.model(role).model.set_attn_implementation(attention)
    return pair


@pytest.fixture(scope="module", params=["shared", "cross"])
def gpu_pair(request, model_dirs):
    return gpu_pair_of(model_dirs, request.param)


def test_auto_device_and_dtype_on_gpu(model_dirs):
    pair = Pair(
        pair_spec(
            {
                "name": "p",
                "base": {"source": model_dirs["cross_base"]},
                "guidance": {"source": model_dirs["cross_guidance"]},
            }
        )
    )
    base = pair.model("base")
    assert base.device.type == "cuda" and base.model.dtype == torch.bfloat16
    [out] = pair.decoder({"name": "blendin"}).generate([Prompt(PROMPTS[0])], max_new_tokens=8)
    assert out.n_tokens >= 1


def test_tau_zero_is_generate_on_gpu(gpu_pair):
    base = gpu_pair.model("base")
    expected = hf_greedy(base, rendered(base, PROMPTS), MAX_NEW)
    outs = gpu_pair.decoder({"name": "nudging", "tau": 0.0}).generate(
        [Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW, batch_size=len(PROMPTS)
    )
    assert [o.token_ids for o in outs] == expected


@pytest.mark.parametrize(
    "method", GUIDED + [{"name": "probe", "tau": 0.4}], ids=lambda m: f"{m['name']}-{m.get('top_k', '')}"
)
def test_cached_equals_recompute_on_gpu(method, gpu_pair):
    """The GPU defaults (every-step guidance on its own stream, tokens fed before the host reads them)
    against full recomputation; a stop string makes rows end apart, so waiting prompts join running rows."""
    prompts = [Prompt(p) for p in PROMPTS]
    cached = gpu_pair.decoder(method).generate(prompts, max_new_tokens=MAX_NEW, batch_size=2, stop_strings=["e"])
    fresh = gpu_pair.decoder(method, use_cache=False).generate(
        prompts, max_new_tokens=MAX_NEW, batch_size=2, stop_strings=["e"]
    )
    assert [o.token_ids for o in cached] == [o.token_ids for o in fresh]
    if method["name"] == "probe":
        assert all(o.n_applied == 0 for o in cached) and any(o.n_consulted for o in cached)


def test_eager_attention_and_text_view_on_gpu(model_dirs):
    pair = gpu_pair_of(model_dirs, "cross", attention="eager")
    prompts = [Prompt(p) for p in PROMPTS]
    for base_view in ("ids", "text"):
        cached = pair.decoder({"name": "nudging"}, base_view=base_view).generate(
            prompts, max_new_tokens=MAX_NEW, batch_size=3
        )
        fresh = pair.decoder({"name": "nudging"}, base_view=base_view, use_cache=False).generate(
            prompts, max_new_tokens=MAX_NEW, batch_size=3
        )
        assert [o.token_ids for o in cached] == [o.token_ids for o in fresh], base_view


@pytest.mark.parametrize("compile", ["compile", "cudagraphs"])
def test_compiled_and_graphed_steps_equal_eager_on_gpu(compile, model_dirs):
    """One tokenizer only: each model compiles once per mode, which takes a while."""
    pair = gpu_pair_of(model_dirs, "shared")
    prompts = [Prompt(p) for p in PROMPTS]
    for method in ({"name": "base"}, {"name": "nudging"}, {"name": "blendin"}):
        eager = pair.decoder(method).generate(prompts, max_new_tokens=MAX_NEW, batch_size=3, stop_strings=["e"])
        fast = pair.decoder(method, compile=compile).generate(
            prompts, max_new_tokens=MAX_NEW, batch_size=3, stop_strings=["e"]
        )
        assert [o.token_ids for o in fast] == [o.token_ids for o in eager], (compile, method)


def test_one_copy_to_the_host_per_step_on_gpu(gpu_pair):
    from test_step_discipline import counted_steps

    decoder = gpu_pair.decoder({"name": "blendin"}, guidance_schedule="every")  # the GPU default
    with counted_steps() as (counts, reads):
        decoder.generate([Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW, batch_size=3)
    assert reads["n"] == 0, sorted(set(reads["where"]))
    assert sum(s for s, _ in counts) <= len(counts) + 2, counts  # top-p past 256 tokens may add a rare copy


def test_sampled_outputs_do_not_depend_on_the_batch_on_gpu(gpu_pair):
    """fp32 on the GPU: the counter-based draws give each output the same tokens at batch 1 and batched,
    with overlap and the guidance on its own stream (the GPU defaults)."""
    from blendin.sampling import Sampling, stream_key

    sampling = Sampling(temperature=1.0, top_p=0.95, seed=4)
    prompts = [Prompt(p) for p in PROMPTS]
    keys = [stream_key(4, str(i), 0) for i in range(len(prompts))]
    decoder = gpu_pair.decoder({"name": "blendin", "tau": 0.6}, sampling=sampling)
    one = [decoder.generate([p], max_new_tokens=MAX_NEW, batch_size=1, keys=[k])[0] for p, k in zip(prompts, keys)]
    batched = decoder.generate(prompts, max_new_tokens=MAX_NEW, batch_size=len(prompts), keys=keys)
    assert [o.token_ids for o in one] == [o.token_ids for o in batched]
    assert all(p == p for o in batched for p in o.trace["sample_prob"])  # every token was drawn


def test_synthetic_pairs_decode_in_bf16_on_gpu():
    """What `python -m blendin.bench --synthetic ...` runs on a GPU, at toy size: both paths (one
    tokenizer, two tokenizers), every guided method, batch 1 and batched."""
    from blendin.synthetic import synthetic_pair

    for preset in ("tiny", "tiny-shared"):
        pair = synthetic_pair(preset, device="cuda", dtype="bfloat16")
        prompts = [Prompt(p) for p in PROMPTS]
        for method in ({"name": "base"}, {"name": "nudging"}, {"name": "blendin"}, {"name": "nudging_words"}):
            outs = pair.decoder(method).generate(prompts, max_new_tokens=MAX_NEW, batch_size=len(prompts))
            assert all(1 <= o.n_tokens for o in outs), method


def test_teacher_forcing_on_gpu(gpu_pair):
    outs = gpu_pair.decoder({"name": "forced"}).generate(
        [Prompt(p) for p in PROMPTS[:2]], continuations=["The answer is 42.", "Café au lait."]
    )
    assert all(o.n_tokens == len(o.trace["ref_id"]) > 0 for o in outs)


# ---- what only a GPU can show: real syncs, freed memory, graphs that neither overwrite nor pile up ----


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "no-overlap"])
def test_a_step_makes_no_device_sync_but_its_one_copy_on_gpu(overlap, gpu_pair, monkeypatch):
    """torch's sync debug mode raises on every synchronising call (.item(), a blocking copy, nonzero,
    a host read hidden in a library), which patched tensor methods on a CPU cannot all see. Only the
    step's one copy to the host (`transfer.PendingCopy.wait`) may wait; both the GPU default (the
    guidance on its own stream, tokens fed before the host reads them) and overlap=False are checked."""
    from blendin import engine, transfer

    wait, step = transfer.PendingCopy.wait, engine._Batch.step

    def allowed_wait(self):
        torch.cuda.set_sync_debug_mode("default")
        try:
            return wait(self)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    def strict_step(self):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(self)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(transfer.PendingCopy, "wait", allowed_wait)
    monkeypatch.setattr(engine._Batch, "step", strict_step)
    prompts = [Prompt(p) for p in PROMPTS]
    for method in ({"name": "base"}, {"name": "nudging"}, {"name": "blendin"}, {"name": "blendin", "top_k": None}):
        decoder = gpu_pair.decoder(method, guidance_schedule="every", overlap=overlap)
        outs = decoder.generate(prompts, max_new_tokens=MAX_NEW, batch_size=2, stop_strings=["e"])
        reference = gpu_pair.decoder(method, use_cache=False).generate(
            prompts, max_new_tokens=MAX_NEW, batch_size=2, stop_strings=["e"]
        )
        assert [o.token_ids for o in outs] == [o.token_ids for o in reference], (method, overlap)


def test_dropped_caches_give_their_gpu_memory_back_at_once(gpu_pair):
    """With the garbage collector off, the memory a decode allocated is free again when `generate`
    returns (no cache waits for a collector pass), and the next decode allocates the same."""
    import gc

    decoder = gpu_pair.decoder({"name": "nudging"})
    prompts = [Prompt(p) for p in PROMPTS]
    decoder.generate(prompts, max_new_tokens=MAX_NEW, batch_size=2, stop_strings=["e"])  # warm-up
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    gc.disable()
    try:
        for _ in range(3):
            decoder.generate(prompts, max_new_tokens=MAX_NEW, batch_size=2, stop_strings=["e"])
            torch.cuda.synchronize()
            assert torch.cuda.memory_allocated() - before < 2**20, "a decode left memory behind"
    finally:
        gc.enable()


def test_rows_leaving_hold_at_most_one_layer_more_on_gpu(gpu_pair, monkeypatch):
    """The allocator's own peak while rows leave the batch: the KV cache plus at most one layer's worth."""
    from blendin import streams

    extra = []
    select = streams.CachedStream.select

    def measured(self, keep):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        select(self, keep)
        torch.cuda.synchronize()
        kv = sum(t.numel() * t.element_size() for t in self.cache.tensors())
        extra.append((torch.cuda.max_memory_allocated() - before) / (kv / len(self.cache.layers)))

    monkeypatch.setattr(streams.CachedStream, "select", measured)
    gpu_pair.decoder({"name": "nudging"}).generate(
        [Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW, batch_size=3, stop_strings=["e"]
    )
    assert extra and max(extra) <= 1.05, extra


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_cudagraphs_with_rows_joining_and_leaving_on_gpu(kind, model_dirs, monkeypatch):
    """CUDA graphs of both models in one process, rows finishing at different steps (stop strings) and
    prompts joining running rows: the same tokens as eager decoding in float32; a second identical
    decode records no new graph (rows leaving and joining reuse a bounded set); and in bfloat16 with
    the guidance on its own stream under torch.compile, outputs that agree with eager ones."""
    from torch._inductor import cudagraph_trees

    recorded = []
    record = cudagraph_trees.CUDAGraphTreeManager.record_function

    def counting(self, *args, **kwargs):
        recorded.append(1)
        return record(self, *args, **kwargs)

    monkeypatch.setattr(cudagraph_trees.CUDAGraphTreeManager, "record_function", counting)
    pair = gpu_pair_of(model_dirs, kind)
    prompts = [Prompt(p) for p in PROMPTS] * 2
    for method in ({"name": "nudging"}, {"name": "blendin"}):
        eager = pair.decoder(method).generate(prompts, max_new_tokens=MAX_NEW, batch_size=3, stop_strings=["e"])
        graphed = pair.decoder(method, compile="cudagraphs")
        first = graphed.generate(prompts, max_new_tokens=MAX_NEW, batch_size=3, stop_strings=["e"])
        assert [o.token_ids for o in first] == [o.token_ids for o in eager], method
        after_first = len(recorded)
        again = graphed.generate(prompts, max_new_tokens=MAX_NEW, batch_size=3, stop_strings=["e"])
        assert [o.token_ids for o in again] == [o.token_ids for o in eager], method
        assert len(recorded) == after_first, "the second decode recorded new graphs"
    assert recorded, "cudagraphs recorded graphs"
    bf16 = Pair(pair.spec, device="cuda", dtype="bfloat16")
    for compile in ("compile", "cudagraphs"):
        eager = bf16.decoder({"name": "blendin"}).generate(prompts, max_new_tokens=MAX_NEW, batch_size=3)
        fast = bf16.decoder({"name": "blendin"}, compile=compile).generate(
            prompts, max_new_tokens=MAX_NEW, batch_size=3
        )
        shared = [_shared_prefix(a.token_ids, b.token_ids) / max(1, len(a.token_ids)) for a, b in zip(eager, fast)]
        assert sum(shared) / len(shared) >= 0.5, (compile, shared)  # bf16 kernels round differently


def _shared_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_auto_batch_and_halving_on_a_small_gpu(model_dirs, tmp_path):
    """A GPU made small (the process may use only ~50 MB more than its models hold), with models whose
    KV cache is large enough to matter (CPU-sized synthetic llamas, float32): batch_size=auto sizes the
    batch from what that share leaves; a batch of 6 that does not fit runs out of memory for real,
    is halved until it fits, and the run ends with the outputs of an unconstrained one. (The runner's
    own path, `run._decode`, on hand-made samples: no benchmark data needed on the GPU machine.)"""
    from test_run import config

    from blendin.benchmarks import Sample
    from blendin.identity import begin_session
    from blendin.run import _decode, resolved_batch_size
    from blendin.sampling import Sampling
    from blendin.store import RunStore
    from blendin.synthetic import synthetic_pair

    pair = synthetic_pair("llama110m+llama14m", device="cuda", dtype="float32")
    samples = [Sample(f"s{i}", Prompt(PROMPTS[i % len(PROMPTS)]), None) for i in range(6)]
    pending = [(s, 0) for s in samples]

    def run(name, batch_size):
        cfg = config(
            model_dirs, tmp_path / name, "method=nudging", "benchmark.max_new_tokens=200", f"batch_size={batch_size}"
        )
        decoder = pair.decoder({"name": "nudging"})
        store = RunStore(tmp_path / name / "run")
        size = resolved_batch_size(cfg, decoder, samples)
        begin_session(store.path, "digest", {"batch_size": size}, resuming=False)
        _decode(cfg, decoder, pending, store, size, Sampling())
        outputs = {r["id"]: r["output"] for r in store.samples()}
        sessions = json.loads((store.path / "identity.json").read_text())["sessions"]
        return size, outputs, [s["batch_size"] for s in sessions]

    _, expected, _ = run("plain", 6)
    torch.cuda.synchronize()
    _, total = torch.cuda.mem_get_info()
    try:
        torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + 50 * 2**20) / total)
        auto, outputs, _ = run("auto", "auto")
        assert 1 <= auto < 6 and outputs == expected, auto
        forced, outputs, sizes = run("forced", 6)
        assert sizes[0] == 6 and len(sizes) >= 2 and sizes[-1] < 6, sizes  # halved after a real out-of-memory
        assert outputs == expected
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
