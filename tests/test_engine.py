"""The decoding engine against independent references: transformers' own greedy generate, and a
decoder that recomputes every step from scratch without any cache."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import PROMPTS, make_pair

from blendin.prompts import Prompt, render_ids
from blendin.streams import RecomputeStream
from blendin.views import TokenView

GUIDED = [
    {"name": "nudging", "tau": 0.4},
    {"name": "blendin", "tau": 0.4, "alpha": "auto", "top_k": 100},
    {"name": "blendin", "tau": 0.4, "alpha": 0.5, "top_k": None},
    {"name": "cap", "tau": 0.4, "cap": 0.15},
    {"name": "af", "tau": 0.4, "agreement_k": 5},
    {"name": "cc", "tau": 0.4},
    {"name": "af_cc", "tau": 0.4, "agreement_k": 5},
]
MAX_NEW = 24


def hf_greedy(loaded, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers' generate(do_sample=False) on left-padded prompts; tokens up to the first EOS."""
    width = max(len(p) for p in prompts)
    pad = loaded.pad_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = loaded.model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(loaded.eos_ids),
        pad_token_id=pad,
    )
    results = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in loaded.eos_ids), len(row))
        results.append(row[:cut])
    return results


def rendered(loaded, prompts):
    return [render_ids(Prompt(p), loaded.tokenizer, loaded.spec.prompt_format) for p in prompts]


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_tau_zero_is_base_greedy_generate(kind, shared_pair, cross_pair):
    pair = shared_pair if kind == "shared" else cross_pair
    base = pair.model("base")
    prompts = [Prompt(p) for p in PROMPTS]
    single = [hf_greedy(base, [ids], MAX_NEW)[0] for ids in rendered(base, PROMPTS)]
    batched = hf_greedy(base, rendered(base, PROMPTS), MAX_NEW)
    assert single == batched, "reference itself differs between batch sizes (float ties)"
    for method in [{"name": "base"}] + [dict(m, tau=0.0) for m in GUIDED]:
        decoder = pair.decoder(method)
        for batch_size in (1, len(PROMPTS)):
            outs = decoder.generate(prompts, max_new_tokens=MAX_NEW, batch_size=batch_size)
            assert [o.token_ids for o in outs] == single, (method, batch_size)
            assert all(o.n_applied == 0 and o.n_overrides == 0 for o in outs)


@pytest.mark.parametrize(
    "method",
    [
        {"name": "nudging", "tau": 1.5},
        {"name": "blendin", "tau": 1.5, "alpha": 1.0, "top_k": 100},
        {"name": "blendin", "tau": 1.5, "alpha": 1.0, "top_k": None},
        {"name": "guidance"},
    ],
)
def test_guidance_everywhere_is_guidance_greedy(method, shared_pair, monkeypatch):
    monkeypatch.setattr("blendin.methods._WARNED", set())  # the tau > 1 warning comes once per config and process
    guidance = shared_pair.model("guidance")
    expected = [hf_greedy(guidance, [ids], MAX_NEW)[0] for ids in rendered(guidance, PROMPTS)]
    with pytest.warns(UserWarning, match="every step") if method.get("tau", 0) > 1 else _nothing():
        decoder = shared_pair.decoder(method)
    for batch_size in (1, len(PROMPTS)):
        outs = decoder.generate([Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW, batch_size=batch_size)
        assert [o.token_ids for o in outs] == expected, batch_size
        if method["name"] != "guidance":
            assert all(o.n_applied == o.n_tokens for o in outs)


@pytest.mark.parametrize("kind", ["shared", "cross"])
@pytest.mark.parametrize("method", GUIDED, ids=lambda m: f"{m['name']}-{m.get('top_k', '')}")
def test_cached_decoding_equals_full_recompute(kind, method, shared_pair, cross_pair):
    pair = shared_pair if kind == "shared" else cross_pair
    prompts = [Prompt(p) for p in PROMPTS]
    cached = pair.decoder(method).generate(prompts, max_new_tokens=MAX_NEW, batch_size=len(PROMPTS))
    fresh = pair.decoder(method, use_cache=False).generate(prompts, max_new_tokens=MAX_NEW, batch_size=len(PROMPTS))
    for a, b in zip(cached, fresh):
        assert a.token_ids == b.token_ids
        assert a.trace["applied"] == b.trace["applied"]
        assert a.trace["guide_top_id"] == b.trace["guide_top_id"]
    assert sum(o.n_applied for o in cached) > 0, "the test should exercise guidance"
    assert any(0 < o.n_applied < o.n_tokens for o in cached), "and confident steps too"


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_trace_counts_agree_with_rates(kind, shared_pair, cross_pair):
    pair = shared_pair if kind == "shared" else cross_pair
    for method in GUIDED:
        for out in pair.decoder(method).generate([Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW):
            trace = out.trace
            assert len(trace["step"]) == out.n_tokens == len(set(trace["step"]))
            assert sum(trace["applied"]) == out.n_applied
            assert out.intervention_rate == pytest.approx(sum(trace["applied"]) / out.n_tokens)
            overrides = [c != b for c, b in zip(trace["chosen_id"], trace["base_top_id"])]
            assert trace["override"] == overrides and sum(overrides) == out.n_overrides
            assert out.override_rate == pytest.approx(out.n_overrides / out.n_tokens)
            tau = method["tau"]
            assert trace["consulted"] == [p < tau for p in trace["base_top_prob"]]
            assert all(c for c, a in zip(trace["consulted"], trace["applied"]) if a), "applied implies consulted"
            if method["name"] in ("nudging", "blendin"):
                assert trace["applied"] == trace["consulted"]
            if method["name"] == "af":
                assert all(1 <= r <= 5 for r, a in zip(trace["guide_top_rank"], trace["applied"]) if a)
            for c, g in zip(trace["consulted"], trace["guide_top_rank"]):
                assert (g == -1) if not c else (g == -1 or g >= 1)
            blank = [not c for c in trace["consulted"]]  # no guidance facts where it was not consulted
            for column in ("guide_top_in_base_top_p", "guide_top_spelled"):
                assert not any(v for v, b in zip(trace[column], blank) if b), column
            assert all(v == -1 for v, b in zip(trace["base_top_p_size"], blank) if b)
            assert all(v != v for v, b in zip(trace["guide_top_prob"], blank) if b)


def test_cap_running_keeps_the_rate_under_the_cap(cross_pair):
    outs = cross_pair.decoder({"name": "cap", "tau": 0.9, "cap": 0.15, "mode": "running"}).generate(
        [Prompt(p) for p in PROMPTS], max_new_tokens=40
    )
    for out in outs:
        applied = out.trace["applied"]
        for t, a in enumerate(applied):
            if a and t > 0:
                assert sum(applied[:t]) < 0.15 * t
        assert out.n_applied >= 1
    uncapped = cross_pair.decoder({"name": "nudging", "tau": 0.9}).generate(
        [Prompt(p) for p in PROMPTS], max_new_tokens=40
    )
    assert sum(o.n_applied for o in outs) < sum(o.n_applied for o in uncapped)


def test_cap_latch_switches_guidance_off_for_good(cross_pair):
    """The paper's cap: free for `warmup` tokens, then off for the rest of the sample at the first
    uncertain step where applied / generated >= cap. Replayed here from the trace's consulted steps."""
    cap, warmup = 0.15, 5
    outs = cross_pair.decoder({"name": "cap", "tau": 0.9, "cap": cap, "mode": "latch", "warmup": warmup}).generate(
        [Prompt(p) for p in PROMPTS], max_new_tokens=40
    )
    latched_somewhere = False
    for out in outs:
        expected, latched = [], False
        for t, consulted in enumerate(out.trace["consulted"]):
            if consulted and t >= warmup and sum(expected) >= cap * t:
                latched = True
            expected.append(consulted and not latched)
        assert out.trace["applied"] == expected
        latched_somewhere |= latched and any(
            out.trace["consulted"][t] for t in range(len(expected)) if not expected[t] and t >= warmup
        )
    assert latched_somewhere, "the test should see a latch switch guidance off"
    free = cross_pair.decoder({"name": "cap", "tau": 0.9, "cap": 0.0}).generate(
        [Prompt(p) for p in PROMPTS], max_new_tokens=40
    )
    nudged = cross_pair.decoder({"name": "nudging", "tau": 0.9}).generate(
        [Prompt(p) for p in PROMPTS], max_new_tokens=40
    )
    assert [o.token_ids for o in free] == [o.token_ids for o in nudged], "cap=0 means no cap"


def test_stop_string_max_tokens_and_guidance_eos(model_dirs, cross_pair):
    prompt = [Prompt(PROMPTS[1])]
    decoder = cross_pair.decoder({"name": "nudging", "tau": 0.4})
    [full] = decoder.generate(prompt, max_new_tokens=MAX_NEW)
    assert full.stop_reason == "max_new_tokens" and full.n_tokens == MAX_NEW
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    [cut] = decoder.generate(prompt, max_new_tokens=MAX_NEW, stop_strings=[stop])
    assert cut.stop_reason == "stop_string"
    assert stop not in cut.text and full.text.startswith(cut.text) and len(cut.text) <= full.text.find(stop)
    # A guidance model that always wants to end: its EOS wins the first uncertain step and ends the text.
    pair = make_pair(model_dirs, "cross")
    guidance = pair.model("guidance")
    eos = guidance.tokenizer.eos_token_id
    guidance.model.lm_head.register_forward_hook(
        lambda m, i, out: out.index_add(-1, torch.tensor([eos]), torch.full(out.shape[:-1] + (1,), 50.0))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tau > 1 (tested above)
        decoder = pair.decoder({"name": "nudging", "tau": 1.5})
    [ended] = decoder.generate(prompt, max_new_tokens=MAX_NEW)
    assert ended.stop_reason == "eos" and ended.n_tokens == 1 and ended.text == "" and ended.token_ids == []
    assert ended.trace["source"] == [1]


def test_guidance_view_follows_text_across_tokenizers(cross_pair):
    """The guidance always reads prompt + tokenize(text), even when re-tokenizing merges tokens."""
    guidance = cross_pair.model("guidance")
    tok = guidance.tokenizer
    prompts = rendered(guidance, PROMPTS[:2])
    view = TokenView(guidance, by_text=True, use_cache=True)
    view.admit(prompts)
    reference = RecomputeStream(guidance.model, guidance.pad_id)
    texts = [
        ["", "hel", "hello", "hello wor", "hello world", "hello world.\n", "hello world.\nCaf", "hello world.\nCafé"],
        [" 日", " 日本", " 日本語", " 日本語 and", " 日本語 and emoji 🙂", " 日本語 and emoji 🙂!", "x", "xy"],
    ]
    for step in range(len(texts[0])):
        now = [texts[0][step], texts[1][step]]
        logits = view.catch_up([0, 1], texts=now)
        want = [p + tok(t, add_special_tokens=False)["input_ids"] for p, t in zip(prompts, now)]
        assert [view.stream.tokens(r) for r in range(2)] == want
        expected = reference.start(want)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def naive_nudging(pair, prompt: str, tau: float, max_new_tokens: int) -> list[int]:
    """NUDGING the slow, obvious way: full forward passes, the guidance re-reads tokenize(text)."""
    base, guidance, vocab = pair.model("base"), pair.model("guidance"), pair.vocab
    base_prompt = rendered(base, [prompt])[0]
    guide_prompt = rendered(guidance, [prompt])[0]
    ids: list[int] = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            probs = torch.softmax(base.model(torch.tensor([base_prompt + ids])).logits[0, -1].float(), -1)
        if probs.max() >= tau:
            chosen = [int(probs.argmax())]
        else:
            text = base.tokenizer.decode(ids)
            g_ids = guide_prompt + guidance.tokenizer(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                g_top = int(guidance.model(torch.tensor([g_ids])).logits[0, -1].argmax())
            mapped = int(vocab.guidance_to_base[g_top])
            # a guidance-only token is spelled by its bytes (checked in test_vocab)
            chosen = [mapped] if mapped >= 0 else vocab.base_ids_for_guidance_token(g_top)
        if len(chosen) == 1 and chosen[0] in base.eos_ids:
            break
        ids += chosen
    return ids


def test_cross_tokenizer_nudging_matches_naive_reference(cross_pair):
    prompts = PROMPTS
    outs = cross_pair.decoder({"name": "nudging", "tau": 0.5}).generate(
        [Prompt(p) for p in prompts], max_new_tokens=MAX_NEW
    )
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == naive_nudging(cross_pair, prompt, 0.5, MAX_NEW)
    assert sum(o.n_applied for o in outs) > 5


def test_batches_report_their_samples_and_outputs_keep_input_order(cross_pair):
    prompts = [Prompt(p) for p in PROMPTS]
    seen = {}
    decoder = cross_pair.decoder({"name": "blendin"})
    outs = decoder.generate(
        prompts, max_new_tokens=8, batch_size=3, on_batch=lambda idx, gens: seen.update(zip(idx, gens))
    )
    assert sorted(seen) == list(range(len(prompts)))
    assert [seen[i] for i in range(len(prompts))] == outs
    alone = [decoder.generate([p], max_new_tokens=8)[0].token_ids for p in prompts]
    assert [o.token_ids for o in outs] == alone


def _paper_architecture(name: str, tok):
    """Tiny random models of the paper's other base architectures, with peaked distributions."""
    import transformers as T

    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    if name == "gemma2":  # google/gemma-2-9b: sliding window, logit soft-capping
        return T.Gemma2ForCausalLM(
            T.Gemma2Config(**common, sliding_window=8, initializer_range=0.45, tie_word_embeddings=False)
        )
    if name == "qwen3":  # Qwen/Qwen3-*-Base: q/k norms
        return T.Qwen3ForCausalLM(T.Qwen3Config(**common, initializer_range=0.5))
    # google/gemma-3-4b-pt and -it are vision-language checkpoints: they load as Gemma3ForConditionalGeneration
    text = dict(common, sliding_window=512, layer_types=["sliding_attention", "full_attention"])
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    return T.Gemma3ForConditionalGeneration(
        T.Gemma3Config(
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=4,
            initializer_range=0.45,
            image_token_index=len(tok) - 1,
            boi_token_index=len(tok) - 2,
            eoi_token_index=len(tok) - 3,
        )
    )


@pytest.mark.parametrize(
    "architecture, class_name",
    [("gemma2", "Gemma2ForCausalLM"), ("qwen3", "Qwen3ForCausalLM"), ("gemma3_vl", "Gemma3ForConditionalGeneration")],
)
def test_the_paper_base_architectures_decode_like_their_generate(architecture, class_name, model_dirs, tmp_path):
    from conftest import _piece_tokenizer, _save

    from blendin.pair import Pair, pair_spec

    tok = _piece_tokenizer()
    torch.manual_seed(5)
    folder = _save(_paper_architecture(architecture, tok).eval(), tok, tmp_path / architecture)
    pair = Pair(
        pair_spec(
            {"name": architecture, "base": {"source": folder}, "guidance": {"source": model_dirs["cross_guidance"]}}
        ),
        device="cpu",
    )
    base = pair.model("base")
    assert type(base.model).__name__ == class_name
    expected = [hf_greedy(base, [ids], MAX_NEW)[0] for ids in rendered(base, PROMPTS)]
    assert len({tuple(e) for e in expected}) > 1, "degenerate reference: every prompt gives the same tokens"
    prompts = [Prompt(p) for p in PROMPTS]
    for method in ({"name": "base"}, {"name": "nudging", "tau": 0.0}, {"name": "blendin", "tau": 0.0}):
        outs = pair.decoder(method).generate(prompts, max_new_tokens=MAX_NEW, batch_size=4)
        assert [o.token_ids for o in outs] == expected, method
    cached = pair.decoder({"name": "blendin"}).generate(prompts, max_new_tokens=MAX_NEW, batch_size=4)
    fresh = pair.decoder({"name": "blendin"}, use_cache=False).generate(prompts, max_new_tokens=MAX_NEW, batch_size=4)
    assert [o.token_ids for o in cached] == [o.token_ids for o in fresh]
    assert sum(o.n_applied for o in cached) > 0  # the guidance does take part
