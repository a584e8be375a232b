"""The engine on a CUDA device (skipped without one; CI has none)."""
from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS
from test_engine import GUIDED, MAX_NEW, hf_greedy, rendered

from blendin.pair import Pair, pair_spec
from blendin.prompts import Prompt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def gpu_pair(model_dirs):
    return Pair(pair_spec({"name": "tiny_cross_gpu", "base": {"source": model_dirs["cross_base"]},
                           "guidance": {"source": model_dirs["cross_guidance"]}}), device="cuda", dtype="float32")


def test_auto_device_and_dtype_on_gpu(model_dirs):
    pair = Pair(pair_spec({"name": "p", "base": {"source": model_dirs["cross_base"]},
                           "guidance": {"source": model_dirs["cross_guidance"]}}))
    base = pair.model("base")
    assert base.device.type == "cuda" and base.model.dtype == torch.bfloat16
    [out] = pair.decoder({"name": "blendin"}).generate([Prompt(PROMPTS[0])], max_new_tokens=8)
    assert out.n_tokens >= 1


def test_tau_zero_is_generate_on_gpu(gpu_pair):
    base = gpu_pair.model("base")
    expected = hf_greedy(base, rendered(base, PROMPTS), MAX_NEW)
    outs = gpu_pair.decoder({"name": "nudging", "tau": 0.0}).generate([Prompt(p) for p in PROMPTS],
                                                                      max_new_tokens=MAX_NEW, batch_size=len(PROMPTS))
    assert [o.token_ids for o in outs] == expected


@pytest.mark.parametrize("method", GUIDED, ids=lambda m: f"{m['name']}-{m.get('top_k', '')}")
def test_cached_equals_recompute_on_gpu(method, gpu_pair):
    prompts = [Prompt(p) for p in PROMPTS]
    cached = gpu_pair.decoder(method).generate(prompts, max_new_tokens=MAX_NEW, batch_size=len(prompts))
    fresh = gpu_pair.decoder(method, use_cache=False).generate(prompts, max_new_tokens=MAX_NEW, batch_size=len(prompts))
    assert [o.token_ids for o in cached] == [o.token_ids for o in fresh]


def test_synthetic_pairs_decode_in_bf16_on_gpu():
    """What `python -m blendin.bench --synthetic ...` runs on a GPU, at toy size: both paths (one
    tokenizer, two tokenizers), every guided method, batch 1 and batched."""
    from blendin.synthetic import synthetic_pair

    pair = synthetic_pair("tiny", device="cuda", dtype="bfloat16")
    prompts = [Prompt(p) for p in PROMPTS]
    for method in ({"name": "base"}, {"name": "nudging"}, {"name": "blendin"}, {"name": "nudging_words"}):
        outs = pair.decoder(method).generate(prompts, max_new_tokens=MAX_NEW, batch_size=len(prompts))
        assert all(1 <= o.n_tokens for o in outs), method


def test_teacher_forcing_on_gpu(gpu_pair):
    outs = gpu_pair.decoder({"name": "forced"}).generate([Prompt(p) for p in PROMPTS[:2]],
                                                         continuations=["The answer is 42.", "Café au lait."])
    assert all(o.n_tokens == len(o.trace["ref_id"]) > 0 for o in outs)
