"""The field's other decoding rules: token-wise deferral (KAD) and proxy-tuning.

Each rule is checked against an independent computation written here from the models' own forward
passes (plain Python over lists, no code of `blendin.policies`): the greedy tokens of a naive
recompute loop, the distribution sampled from (chi-square, with a negative control that must fail),
the log-likelihood lm-eval reads, and the per-step deferred mass of the trace. The rules are also
held to their limits: `base` at a never-defer threshold, NUDGING where KAD says a rule reduces to it.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from conftest import PROMPTS, make_pair
from test_policies import make_step
from test_sampling import _padded, chi_square_p, sampled

from blendin.engine import TokenDecoder
from blendin.errors import ConfigError
from blendin.likelihood import Item, score
from blendin.methods import REGISTRY, make_policy
from blendin.policies import Deferral
from blendin.prompts import Prompt
from blendin.sampling import Sampling

KAD = [name for name in REGISTRY if name.startswith("kad_")]
NEVER = {  # each rule's threshold at which it defers nothing
    "kad_token_wise": 0.0,
    "kad_token_v2": 1.0,
    "kad_max_q_minus": 1.0,
    "kad_max_q_plus": -1.0,
    "kad_max_p_plus": -1.0,
    "kad_minus_max_p_plus": 1.0,
    "kad_budget_lr": 0.0,
}
SETTINGS = [(name, t) for name in KAD for t in (0.1, 0.4)] + [("proxy_tuning", 1.0), ("proxy_tuning", 0.5)]


@pytest.fixture(scope="module")
def trios(model_dirs):
    """The tiny pairs with a third model, the guidance's "untuned twin" (same tokenizer as the guidance)."""
    return {kind: make_pair(model_dirs, kind, untuned=True) for kind in ("shared", "cross")}


def method_of(name: str, value: float) -> dict:
    return {"name": name, "alpha" if name == "proxy_tuning" else "threshold": value}


# ---- the rules, written out independently ----------------------------------------------------------


def probs_after(loaded, ids: list[int]) -> list[float]:
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids])).logits[0, -1].double()
    return torch.softmax(logits, -1).tolist()


def deferred(rule: str, lam: float, p: list[float], q_base: list[float], q_top: float) -> list[bool]:
    """KAD's deferral set d(y) on base tokens (their cascade_generation.py's rules, one by one)."""
    p_top = max(p)
    if rule == "budget_lr":  # least likely first (highest -log p), while the running mass stays within lam
        out, running = [False] * len(p), 0.0
        for y in sorted(range(len(p)), key=lambda y: (p[y], y)):
            running += p[y]
            if running > lam + 1e-12:
                break
            out[y] = True
        return out
    tests = {
        "max": lambda y: p_top < lam,
        "token_wise": lambda y: p[y] < lam,
        "token_v2": lambda y: p[y] < p_top - lam,
        "token_max": lambda y: p[y] < p_top,
        "max_q_minus": lambda y: p[y] < q_top - lam,
        "max_q_plus": lambda y: p[y] < q_top + lam,
        "max_p_plus": lambda y: q_base[y] < p_top + lam,
        "minus_max_p_plus": lambda y: q_base[y] > p_top + lam,
    }
    return [tests[rule](y) for y in range(len(p))]


def rule_distribution(pair, name: str, value: float, pb, pg, pu=None) -> dict[tuple, float]:
    """The rule's next-token distribution keyed by the base ids it writes (a guidance token without a
    base twin: its spelling), from the models' own probabilities pb, pg (and the untuned pu)."""
    vocab = pair.vocab
    g2b = vocab.guidance_to_base.tolist()

    def key(g: int) -> tuple:
        return (g2b[g],) if g2b[g] >= 0 else tuple(vocab.base_ids_for_guidance_token(g))

    q_base = [0.0] * len(pb)
    for g, twin in enumerate(g2b):
        if twin >= 0:
            q_base[twin] += pg[g]
    dist: Counter = Counter()
    if name == "proxy_tuning":
        u_base = [0.0] * len(pb)
        for g, twin in enumerate(g2b):
            if twin >= 0:
                u_base[twin] += pu[g]
        scores = {
            y: math.log(pb[y]) + value * (math.log(q_base[y]) - math.log(u_base[y]))
            for y in range(len(pb))
            if y in set(g2b)
        }
        top = max(scores.values())
        total = sum(math.exp(s - top) for s in scores.values())
        return {(y,): math.exp(s - top) / total for y, s in scores.items()}
    rule = name.removeprefix("kad_")
    d = deferred(rule, value, pb, q_base, max(pg))
    mass = sum(p for p, dy in zip(pb, d) if dy)
    for y, (p, dy) in enumerate(zip(pb, d)):
        dist[(y,)] += 0.0 if dy else p
    for g, qg in enumerate(pg):
        dist[key(g)] += mass * qg
    return dict(dist)


def first_step(pair, prompt: Prompt, untuned: bool = False):
    base, guidance = pair.model("base"), pair.model("guidance")
    pb = probs_after(base, base.prompt_ids(prompt))
    gids = guidance.prompt_ids(prompt)
    pg = probs_after(guidance, gids)
    pu = probs_after(pair.model("guidance_untuned"), gids) if untuned else None
    return pb, pg, pu


def tempered(dist: dict, temperature: float) -> dict:
    weights = {k: p ** (1 / temperature) for k, p in dist.items() if p > 0}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def argmax_key(dist: dict) -> tuple:
    return max(dist, key=dist.get)


# ---- greedy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value", SETTINGS)
def test_greedy_tokens_follow_a_naive_recompute_of_the_rule(trios, name, value):
    """Shared tokenizer: six greedy steps of the decoder against the rule recomputed from full forward
    passes of both models (and the twin) at each step. Two tokenizers: the first token."""
    pair = trios["shared"]
    base, guidance = pair.model("base"), pair.model("guidance")
    twin = pair.model("guidance_untuned") if name == "proxy_tuning" else None
    prompt = Prompt(PROMPTS[0])
    out = pair.decoder(method_of(name, value)).generate([prompt], max_new_tokens=6)[0]
    ids_b, ids_g = base.prompt_ids(prompt), guidance.prompt_ids(prompt)
    want = []
    for _ in range(6):
        pu = probs_after(twin, ids_g) if twin is not None else None
        token = argmax_key(
            rule_distribution(pair, name, value, probs_after(base, ids_b), probs_after(guidance, ids_g), pu)
        )
        if token[0] in base.eos_ids:
            break
        want += list(token)
        ids_b, ids_g = ids_b + list(token), ids_g + list(token)  # one tokenizer: the same ids
    assert out.token_ids[: len(want)] == want, name
    cross = trios["cross"]
    first = cross.decoder(method_of(name, value)).generate([prompt], max_new_tokens=1)[0]
    dist = rule_distribution(cross, name, value, *first_step(cross, prompt, untuned=name == "proxy_tuning"))
    got = (first.trace["chosen_id"][0],) if first.trace["chosen_id"][0] >= 0 else tuple(first.token_ids)
    assert got == argmax_key(dist), name


SAMPLING = Sampling(temperature=1.0, seed=5)


@pytest.fixture(scope="module")
def base_texts(trios):
    """The base's own outputs of every prompt on each pair: greedy, and sampled with SAMPLING."""
    prompts = [Prompt(p) for p in PROMPTS]
    return {
        kind: [
            [g.text for g in pair.decoder({"name": "base"}, sampling=s).generate(prompts, max_new_tokens=12)]
            for s in (None, SAMPLING)
        ]
        for kind, pair in trios.items()
    }


@pytest.mark.parametrize("name", KAD)
@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_a_rule_that_never_defers_is_the_base(trios, base_texts, name, kind):
    """Greedy on both pairs; sampled (the same random stream, so the same draws) with two tokenizers."""
    pair = trios[kind]
    prompts = [Prompt(p) for p in PROMPTS]
    never = {"name": name, "threshold": NEVER[name]}
    greedy, drawn_base = base_texts[kind]
    assert [g.text for g in pair.decoder(never).generate(prompts, max_new_tokens=12)] == greedy
    if kind == "shared":
        return
    drawn = pair.decoder(never, sampling=SAMPLING).generate(prompts, max_new_tokens=12)
    assert [g.text for g in drawn] == drawn_base
    assert all(m == 0 for g in drawn for m in g.trace["deferred_mass"])
    # the test can fail: at a threshold that defers, the rule does change the text
    defers = {"name": name, "threshold": -0.3 if name == "kad_minus_max_p_plus" else 0.4}
    assert [g.text for g in pair.decoder(defers, sampling=SAMPLING).generate(prompts, max_new_tokens=12)] != drawn_base


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_kads_max_rule_is_nudging(trios, kind):
    """KAD's `max` rule defers every token where the base's top probability is below the threshold:
    NUDGING with tau = threshold, greedy and as a distribution."""
    pair = trios[kind]
    prompts = [Prompt(p) for p in PROMPTS]
    for tau in (0.3, 0.6):
        kad = TokenDecoder(pair.model("base"), Deferral("max", tau, "kad_max"), pair.model("guidance"), pair.vocab)
        assert [g.text for g in kad.generate(prompts, max_new_tokens=12)] == [
            g.text for g in pair.decoder({"name": "nudging", "tau": tau}).generate(prompts, max_new_tokens=12)
        ]
    # at a threshold above every top probability: the guidance's distribution (NUDGING's at tau > 1)
    pb, pg, _ = first_step(pair, Prompt(PROMPTS[0]))
    kad = rule_distribution(pair, "kad_max", 1.01, pb, pg)
    nudged = rule_distribution(pair, "kad_max_q_plus", 1.0, pb, pg)  # defers every token too
    assert kad == pytest.approx(nudged)


def test_named_equivalences_of_kads_rules():
    """token_max is token_v2 at 0; max_q_plus at -x is max_q_minus at x (on hand-built steps)."""
    gen = torch.Generator().manual_seed(0)
    pb = torch.softmax(torch.randn(6, 30, generator=gen) * 2, -1).tolist()
    pg = torch.softmax(torch.randn(6, 30, generator=gen) * 2, -1).tolist()
    step = make_step(pb, pg, tau=2.0)
    same = Deferral("token_max", 0.0).deferred_set(step)
    assert torch.equal(Deferral("token_v2", 0.0).deferred_set(step), same)
    assert torch.equal(Deferral("max_q_plus", -0.1).deferred_set(step), Deferral("max_q_minus", 0.1).deferred_set(step))


def test_deferral_by_hand():
    # p = (.5, .25, .125, .125), q = (.125, .25, .5, .125): max p = .5, max q = .5; threshold .25
    step = make_step([[0.5, 0.25, 0.125, 0.125]], [[0.125, 0.25, 0.5, 0.125]], tau=2.0)
    sets = {
        "token_wise": [0, 0, 1, 1],  # p < .25
        "token_v2": [0, 0, 1, 1],  # p < .5 - .25
        "max_q_minus": [0, 0, 1, 1],  # p < .5 - .25
        "max_q_plus": [1, 1, 1, 1],  # p < .5 + .25
        "max_p_plus": [1, 1, 1, 1],  # q < .5 + .25
        "minus_max_p_plus": [0, 0, 0, 0],  # q > .75
        "budget_lr": [0, 0, 1, 1],  # .125 + .125 = .25 fits the budget, + .25 does not
        "max": [0, 0, 0, 0],  # max p = .5 >= .25
        "token_max": [0, 1, 1, 1],
    }
    for rule, d in sets.items():
        assert Deferral(rule, 0.25).deferred_set(step)[0].tolist() == d, rule
    # token_wise: mass .25 deferred; token 2: .25 * .5 = .125, token 0: .5 + .25 * .125 = .53125
    choice = make_policy({"name": "kad_token_wise", "threshold": 0.25}).decide(step)
    assert choice.token.item() == 0 and choice.deferred.item() == pytest.approx(0.25)
    assert choice.blend_prob.item() == pytest.approx(0.53125)
    # max_q_plus defers everything: the guidance's token
    assert make_policy({"name": "kad_max_q_plus", "threshold": 0.25}).decide(step).token.item() == 2


# ---- sampled -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value", [("kad_token_wise", 0.4), ("kad_budget_lr", 0.3), ("kad_max_q_minus", 0.1), ("proxy_tuning", 0.7)]
)
@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_sampled_tokens_follow_the_rules_distribution(trios, name, value, kind):
    pair = trios[kind]
    prompt = Prompt(PROMPTS[0])
    temperature = 1.5  # flattens the tiny models' peaked distributions, so that many bins are tested
    counts = sampled(pair, method_of(name, value), prompt, 2000, Sampling(temperature=temperature, seed=11))
    pb, pg, pu = first_step(pair, prompt, untuned=name == "proxy_tuning")
    want = tempered(rule_distribution(pair, name, value, pb, pg, pu), temperature)
    assert chi_square_p(counts, want) > 1e-3
    # negative control: the same draws are far from the base's own distribution
    base = tempered({(y,): p for y, p in enumerate(pb)}, temperature)
    assert chi_square_p(counts, _padded(base, counts)) < 1e-6


# ---- what the trace and the likelihood record ----------------------------------------------------------


@pytest.mark.parametrize("name", ["kad_token_wise", "kad_max_q_minus"])
def test_the_trace_records_the_deferred_mass_and_overrides(trios, name):
    pair = trios["cross"]
    prompt = Prompt(PROMPTS[1])
    out = pair.decoder({"name": name, "threshold": 0.3}).generate([prompt], max_new_tokens=1)[0]
    pb, pg, _ = first_step(pair, prompt)
    q_base = [0.0] * len(pb)
    for g, twin in enumerate(pair.vocab.guidance_to_base.tolist()):
        if twin >= 0:
            q_base[twin] += pg[g]
    d = deferred(name.removeprefix("kad_"), 0.3, pb, q_base, max(pg))
    assert out.trace["deferred_mass"][0] == pytest.approx(sum(p for p, dy in zip(pb, d) if dy), abs=1e-5)
    assert out.trace["override"][0] == (out.trace["chosen_id"][0] != out.trace["base_top_id"][0])
    eos = sum(pg[i] for i in pair.model("guidance").eos_ids)
    assert out.trace["guide_eos_prob"][0] == pytest.approx(eos, rel=1e-4)


@pytest.mark.parametrize("name, value", [("kad_token_wise", 0.4), ("kad_budget_lr", 0.3), ("proxy_tuning", 1.0)])
def test_log_likelihood_is_the_rules_distribution(trios, name, value):
    """lm-eval's log P(continuation) under the rule: the sum of the naive distribution's log-probabilities
    along three tokens (shared tokenizer, so every token is a base id)."""
    pair = trios["shared"]
    base, guidance = pair.model("base"), pair.model("guidance")
    twin = pair.model("guidance_untuned") if name == "proxy_tuning" else None
    prompt = Prompt(PROMPTS[3])
    ids_b, ids_g = base.prompt_ids(prompt), guidance.prompt_ids(prompt)
    continuation = [t for t in base.tokenizer(" over the lazy", add_special_tokens=False)["input_ids"]][:3]
    want, greedy = 0.0, True
    b, g = list(ids_b), list(ids_g)
    for token in continuation:
        pu = probs_after(twin, g) if twin is not None else None
        dist = rule_distribution(pair, name, value, probs_after(base, b), probs_after(guidance, g), pu)
        want += math.log(dist[(token,)])
        greedy = greedy and argmax_key(dist) == (token,)
        b, g = b + [token], g + [token]
    policy = make_policy(method_of(name, value))
    [(got, is_greedy)] = score(
        [Item(tuple(ids_b), tuple(continuation), tuple(ids_g))], policy, base, guidance, pair.vocab, untuned=twin
    )
    assert got == pytest.approx(want, abs=1e-3) and is_greedy == greedy


# ---- proxy-tuning's third model ---------------------------------------------------------------------------


def test_proxy_tuning_at_alpha_zero_is_the_base(trios):
    pair = trios["cross"]
    prompts = [Prompt(p) for p in PROMPTS]
    zero = pair.decoder({"name": "proxy_tuning", "alpha": 0.0}).generate(prompts, max_new_tokens=10)
    base = pair.decoder({"name": "base"}).generate(prompts, max_new_tokens=10)
    # the base restricted to the shared vocabulary: the same text wherever its top token has a guidance twin
    shared = pair.vocab.shared_base_mask.tolist()
    for z, b in zip(zero, base):
        if all(shared[t] for t in b.trace["base_top_id"]):
            assert z.text == b.text


def test_proxy_tuning_needs_the_untuned_twin_before_any_model_loads(model_dirs, monkeypatch):
    from hydra import compose, initialize_config_dir

    import blendin.pair
    from blendin.checks import check_run_config

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(blendin.pair, "load_model", no_loading)
    pair = make_pair(model_dirs, "cross")
    with pytest.raises(
        ConfigError, match="method=proxy_tuning needs pair.guidance_untuned, and pair tiny_cross has none"
    ):
        pair.decoder({"name": "proxy_tuning"})
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name="config", overrides=["method=proxy_tuning", "benchmark=gsm8k"])
    with pytest.raises(ConfigError, match="needs pair.guidance_untuned.*Fix: set pair.guidance_untuned.source"):
        check_run_config(cfg)


def test_an_untuned_twin_with_another_tokenizer_is_refused(model_dirs):
    from blendin.pair import Pair, pair_spec

    pair = Pair(
        pair_spec(
            {
                "name": "odd",
                "base": {"source": model_dirs["cross_base"]},
                "guidance": {"source": model_dirs["cross_guidance"]},
                "guidance_untuned": {"source": model_dirs["cross_base"]},  # the piece tokenizer: not the guidance's
            }
        ),
        device="cpu",
    )
    with pytest.raises(ConfigError, match="has another tokenizer or vocabulary size than the guidance"):
        pair.decoder({"name": "proxy_tuning"})
