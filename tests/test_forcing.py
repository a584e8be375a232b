"""Teacher forcing (`method=forced`) where the answer is known by construction, and against a naive
reference that runs every position as its own full forward pass."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

from blendin.pair import Pair, pair_spec
from blendin.prompts import Prompt

MAX_NEW = 24


def forced(pair, continuations, prompts=PROMPTS, **method):
    decoder = pair.decoder({"name": "forced", **method})
    return decoder.generate([Prompt(p) for p in prompts], continuations=continuations, max_new_tokens=64)


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_walking_the_base_models_own_greedy_output_gives_top1_accuracy_1(kind, shared_pair, cross_pair):
    pair = shared_pair if kind == "shared" else cross_pair
    greedy = pair.decoder({"name": "base"}).generate([Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW)
    outs = forced(pair, [g.token_ids for g in greedy])  # the ids themselves: random text re-tokenizes otherwise
    for g, out in zip(greedy, outs):
        assert out.token_ids == g.token_ids
        assert all(out.trace["base_correct"]) and set(out.trace["base_rank_of_ref"]) == {1}
        assert out.trace["base_top_id"] == g.trace["base_top_id"]
        assert out.trace["base_top_prob"] == pytest.approx(g.trace["base_top_prob"], abs=1e-5)


def test_walking_the_guidance_models_own_greedy_output_gives_guidance_accuracy_1(shared_pair):
    greedy = shared_pair.decoder({"name": "guidance"}).generate([Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW)
    outs = forced(shared_pair, [g.token_ids for g in greedy])
    for g, out in zip(greedy, outs):
        assert out.n_tokens == len(g.token_ids) > 0
        assert all(out.trace["guide_correct"]) and set(out.trace["guide_rank_of_ref"]) == {1}
    assert not all(c for out in outs for c in out.trace["base_correct"]), "the base disagrees somewhere"


def test_a_pair_of_identical_models_gives_alpha_one_half_plus_lambda_p(model_dirs):
    same = model_dirs["shared_base"]
    pair = Pair(
        pair_spec({"name": "twins", "base": {"source": same}, "guidance": {"source": same, "prompt_format": "plain"}}),
        device="cpu",
    )
    outs = forced(pair, ["The quick brown fox jumps over the lazy dog."] * 2, prompts=PROMPTS[:2])
    for out in outs:
        trace = out.trace
        for p, alpha, no_lambda in zip(trace["base_top_prob"], trace["alpha_auto"], trace["alpha_nolambda"]):
            assert alpha == pytest.approx(min(1.0, 0.5 + 0.1 * p), abs=1e-5)
            assert no_lambda == pytest.approx(0.5, abs=1e-6)
        assert out.trace["guide_correct"] == out.trace["base_correct"]
        assert out.trace["blend_correct_auto"] == out.trace["base_correct"]  # blending a model with itself
        assert out.trace["alpha_entropy"] == pytest.approx([0.5] * out.n_tokens, abs=1e-5)


def naive_guidance_top(pair, prompt: str, continuation: str):
    """For each base token of the continuation: the guidance top-1 prob after reading exactly
    tokenize_guidance(text before that token), each by its own full forward pass."""
    base, guidance = pair.model("base"), pair.model("guidance")
    ids = base.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    anchor = base.prompt_ids(Prompt(prompt))[-1:]
    head = base.tokenizer.decode(anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    tops = []
    for i in range(len(ids)):
        both = base.tokenizer.decode(anchor + ids[:i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text = both[len(head) :]
        read = guidance.prompt_ids(Prompt(prompt)) + guidance.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(guidance.model(torch.tensor([read])).logits[0, -1].float(), -1)
        tops.append(float(probs.max()))
    return tops


@pytest.mark.parametrize("guidance_kind", ["llama", "gemma_sliding"])
def test_cross_tokenizer_guidance_reads_what_decoding_would_show_it(guidance_kind, model_dirs, cross_pair):
    if guidance_kind == "llama":
        pair = cross_pair
    else:  # a sliding-window guidance (Gemma-3, 36-token window) with its own SentencePiece tokenizer
        pair = Pair(
            pair_spec(
                {
                    "name": "swap",
                    "base": {"source": model_dirs["shared_base"]},
                    "guidance": {"source": model_dirs["cross_base"], "prompt_format": "plain"},
                }
            ),
            device="cpu",
        )
    text = (
        "Natalia sold 48 clips in April and half as many in May. The quick brown fox jumps over the "
        "lazy dog. Café, naïve, résumé."
    )
    outs = forced(pair, [text, text[:40]], prompts=PROMPTS[:2])
    for prompt, continuation, out in zip(PROMPTS[:2], [text, text[:40]], outs):
        expected = naive_guidance_top(pair, prompt, continuation)
        assert out.trace["guide_top_prob"] == pytest.approx(expected, abs=1e-4)
    # the continuation must really cut guidance tokens (else no branch of the tree pass is tested)
    guidance = pair.model("guidance").tokenizer
    base = pair.model("base").tokenizer
    ids = base(text, add_special_tokens=False)["input_ids"]
    prefixes = [base.decode(ids[:i]) for i in range(1, len(ids))]
    whole = guidance(text, add_special_tokens=False)["input_ids"]
    assert any(
        guidance(p, add_special_tokens=False)["input_ids"] != whole[: len(guidance(p)["input_ids"])] for p in prefixes
    )


def test_forced_needs_references_and_reads_stored_runs(model_dirs, tmp_path):
    from test_run import config

    from blendin.errors import ConfigError
    from blendin.run import execute, run_dir

    with pytest.raises(ConfigError, match="no reference answers"):
        execute(config(model_dirs, tmp_path, "benchmark=xstest", "method=forced"))
    base_cfg = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=base")
    execute(base_cfg)
    metrics = execute(
        config(model_dirs, tmp_path, "benchmark=gsm8k", "method=forced", f"method.source={run_dir(base_cfg)}")
    )
    assert metrics["n_samples"] == 5 and metrics["method"] == "forced"
    gold = execute(config(model_dirs, tmp_path, "benchmark=gsm8k", "method=forced", "benchmark.max_new_tokens=4096"))
    assert gold["score"] == 1.0  # walking the gold solutions: each ends with "The answer is N."


def test_the_lowest_guidance_id_is_a_base_tokens_twin():
    """Several guidance ids may share one base twin (the same bytes): the lowest wins, by a rule that
    does not depend on the order a device applies duplicate writes in; the base EOS maps to the
    guidance's EOS; base ids with no twin map to -1."""
    from types import SimpleNamespace

    from blendin.forcing import ForcedDecoder

    g2b = torch.tensor([3, -1, 3, 0, 5, 0, 3])  # guidance id -> base id
    vocab = SimpleNamespace(guidance_to_base=g2b, base_size=7)
    decoder = ForcedDecoder(SimpleNamespace(eos_ids={6}), None, SimpleNamespace(eos_ids={1}), vocab)
    assert decoder.base_to_guidance.tolist() == [3, -1, -1, 0, -1, 4, 1]
