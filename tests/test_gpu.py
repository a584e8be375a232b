"""The engine on a CUDA device. Skipped without one (CI has none), unless BLENDIN_REQUIRE_CUDA=1 says
a GPU must be there (scripts/gpu_check.sh sets it): then a missing GPU fails the tests."""

from __future__ import annotations

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
