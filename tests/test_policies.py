"""Policies on hand-built distributions, against numbers worked out by hand and against an
independent dict-based re-implementation of the reference code's top-k blend."""

from __future__ import annotations

import math
import random

import pytest
import torch

from blendin import methods
from blendin.errors import ConfigError
from blendin.facts import add_guidance_facts, top_k_overlap, top_p_size
from blendin.methods import make_policy
from blendin.policies import SOURCE_BASE, SOURCE_BLEND, SOURCE_GUIDANCE, Step
from blendin.vocab import VocabMap


def vocab_map(g2b: list[int], base_size: int) -> VocabMap:
    return VocabMap(torch.tensor(g2b), base_size, identical=False, base_tokenizer=None, guidance_tokenizer=None)


def make_step(pb, pg, g2b=None, tau=0.4, n_steps=None, n_applied=None) -> Step:
    """A Step as the engine builds it, from lists of base and guidance distributions."""
    pb, pg = torch.tensor(pb, dtype=torch.float32), torch.tensor(pg, dtype=torch.float32)
    vocab = vocab_map(g2b if g2b is not None else list(range(pg.shape[-1])), pb.shape[-1])
    top_p, top_id = pb.max(-1)
    step = Step(
        pb,
        top_p,
        top_id,
        top_p < tau,
        torch.tensor(n_steps or [0] * len(pb)),
        torch.tensor(n_applied or [0] * len(pb)),
        vocab=vocab,
    )
    add_guidance_facts(step, pg)
    return step


def test_nudging_takes_the_guidance_top_token_only_where_uncertain():
    step = make_step([[0.3, 0.3, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1]], [[0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.1, 0.7]])
    choice = make_policy({"name": "nudging", "tau": 0.4}).decide(step)
    assert choice.token.tolist() == [3, 0]
    assert choice.applied.tolist() == [True, False]
    assert choice.source.tolist() == [SOURCE_GUIDANCE, SOURCE_BASE]


def test_blend_weight_and_choice_by_hand():
    # p_b = .3, p_g = .6, t_g = 1, P_b(t_g) = .25: alpha = .6/.9 + .1*.25
    step = make_step([[0.3, 0.25, 0.2, 0.15, 0.1]], [[0.1, 0.6, 0.1, 0.1, 0.1]])
    alpha = 0.6 / 0.9 + 0.1 * 0.25
    for top_k in (100, None, 2):
        choice = make_policy({"name": "blendin", "tau": 0.4, "top_k": top_k}).decide(step)
        assert choice.alpha.item() == pytest.approx(alpha, abs=1e-6)
        # blended: token 0 -> a*.1 + (1-a)*.3 = .16; token 1 -> a*.6 + (1-a)*.25 = .49
        assert choice.token.item() == 1 and choice.source.item() == SOURCE_BLEND and choice.applied.item()
    # renormalized over the top-2 union {0, 1}: mass a*(.1+.6) + (1-a)*(.3+.25)
    top2 = make_policy({"name": "blendin", "tau": 0.4, "top_k": 2}).decide(step)
    union_mass = alpha * 0.7 + (1 - alpha) * 0.55
    assert top2.blend_prob.item() == pytest.approx((alpha * 0.6 + (1 - alpha) * 0.25) / union_mass, abs=1e-6)
    full = make_policy({"name": "blendin", "tau": 0.4, "top_k": None}).decide(step)
    assert full.blend_prob.item() == pytest.approx(alpha * 0.6 + (1 - alpha) * 0.25, abs=1e-6)  # mass is 1


def test_blend_keeps_the_base_token_when_guidance_is_weak_and_still_counts_as_applied():
    # Guidance is unsure (.26 top) and disagrees; base leans to token 0: the blend keeps it.
    step = make_step([[0.38, 0.12, 0.1, 0.1, 0.1, 0.1, 0.1]], [[0.14, 0.26, 0.12, 0.12, 0.12, 0.12, 0.12]])
    alpha = 0.26 / (0.38 + 0.26) + 0.1 * 0.12
    choice = make_policy({"name": "blendin"}).decide(step)
    assert choice.alpha.item() == pytest.approx(alpha, abs=1e-6)
    assert alpha * 0.14 + (1 - alpha) * 0.38 > alpha * 0.26 + (1 - alpha) * 0.12
    assert choice.token.item() == 0 and choice.applied.item()


def test_alpha_is_clipped_and_fixed_alpha_is_used_as_given():
    step = make_step([[0.3, 0.29, 0.26, 0.15]], [[0.0, 0.0, 0.55, 0.45]])
    big_lambda = make_policy({"name": "blendin", "lam": 5.0}).decide(step)
    assert big_lambda.alpha.item() == 1.0  # .55/.85 + 5 * .26 = 1.95 -> 1
    assert big_lambda.token.item() == 2
    fixed = make_policy({"name": "blendin", "alpha": 0.25}).decide(step)
    assert fixed.alpha.item() == 0.25
    # alpha .25: token 2 -> .25*.55 + .75*.26 = .3325 beats token 0 -> .75*.3 = .225, token 3 -> .225
    assert fixed.token.item() == 2
    zero = make_policy({"name": "blendin", "alpha": 0.0}).decide(step)
    assert zero.token.item() == 0


def test_top_k_union_counts_missing_tokens_as_zero():
    # base top-2 = {0, 1}; guidance top-2 = {3, 2}. Token 2 has base mass .2 but is outside the base's
    # top-2 list, so the top-k blend sees P_b(2) = 0 (and P_b(t_g) = 0), the full blend sees .2.
    pb = [[0.3, 0.29, 0.2, 0.21]]
    pg = [[0.0, 0.0, 0.45, 0.55]]
    step = make_step(pb, pg)
    top2 = make_policy({"name": "blendin", "top_k": 2, "alpha": 0.3}).decide(step)
    full = make_policy({"name": "blendin", "top_k": None, "alpha": 0.3}).decide(step)
    # top-2 union {0,1,2,3}: 0 -> .7*.3=.21, 3 -> .3*.55 = .165 (P_b(3)=0 outside the list), 2 -> .135
    assert top2.token.item() == 0
    # full: 3 -> .3*.55 + .7*.21 = .312 beats 0 -> .21
    assert full.token.item() == 3
    auto_top2 = make_policy({"name": "blendin", "top_k": 2}).decide(step)
    auto_full = make_policy({"name": "blendin", "top_k": None}).decide(step)
    assert auto_top2.alpha.item() == pytest.approx(0.55 / 0.85, abs=1e-6)  # P_b(t_g) = 0 outside top-2
    assert auto_full.alpha.item() == pytest.approx(0.55 / 0.85 + 0.1 * 0.21, abs=1e-6)


def test_cross_vocabulary_blend_renormalizes_over_shared_tokens_and_can_pick_guidance_only_tokens():
    # guidance ids 0..3 -> base ids [1, -1, 0, 2]: guidance token 1 has no base twin.
    g2b = [1, -1, 0, 2]
    pb = [[0.35, 0.33, 0.32]]
    pg = [[0.1, 0.8, 0.05, 0.05]]
    step = make_step(pb, pg, g2b=g2b)
    assert step.guide_top_joint.item() == 3 + 1  # base_size + guidance id
    assert step.guide_top_rank.item() == -1 and step.base_prob_of_guide_top.item() == 0
    nudged = make_policy({"name": "nudging"}).decide(step)
    assert nudged.token.item() == 4
    top_k = make_policy({"name": "blendin", "alpha": 0.9}).decide(step)
    assert top_k.token.item() == 4  # the union keeps the guidance-only token: .9*.8 wins
    # the union is {0, 1, 2} from the base and {1, 4, 0, 2} from the guidance: total mass .9*1 + .1*1
    assert top_k.blend_prob.item() == pytest.approx(0.9 * 0.8, abs=1e-6)
    full = make_policy({"name": "blendin", "alpha": 0.9, "top_k": None}).decide(step)
    # full shared vocabulary: guidance mass on base ids [0: .05, 1: .1, 2: .05] (the .8 on the
    # guidance-only token is dropped); base 0 -> .9*.05 + .1*.35 = .08, base 1 -> .9*.1 + .1*.33 = .123
    assert full.token.item() == 1
    total = 0.9 * 0.2 + 0.1 * 1.0  # renormalized over the shared vocabulary
    assert full.blend_prob.item() == pytest.approx((0.9 * 0.1 + 0.1 * 0.33) / total, abs=1e-6)


def reference_blend(pb: list[float], pg: list[float], g2b: list[int], k: int, lam: float = 0.1):
    """The reference code's rule, written with dicts keyed by token (text) as it does."""
    base_size = len(pb)
    base_list = dict(sorted(enumerate(pb), key=lambda x: -x[1])[:k])
    guide_list: dict[int, float] = {}
    for g, p in sorted(enumerate(pg), key=lambda x: -x[1])[:k]:
        key = g2b[g] if g2b[g] >= 0 else base_size + g
        guide_list[key] = guide_list.get(key, 0.0) + p
    t_g = max(range(len(pg)), key=lambda g: pg[g])
    t_g_key = g2b[t_g] if g2b[t_g] >= 0 else base_size + t_g
    p_b, p_g = max(pb), max(pg)
    alpha = min(1.0, max(0.0, p_g / (p_b + p_g) + lam * base_list.get(t_g_key, 0.0)))
    union = set(base_list) | set(guide_list)
    blended = {t: alpha * guide_list.get(t, 0.0) + (1 - alpha) * base_list.get(t, 0.0) for t in union}
    total = sum(blended.values())
    blended = {t: v / total for t, v in blended.items()}
    best = max(blended.values())
    return {t for t, v in blended.items() if v >= best - 1e-6}, alpha, best


def test_top_k_blend_matches_dict_reference_on_random_distributions():
    rng = random.Random(0)
    for trial in range(200):
        vb, vg, k = rng.randint(5, 40), rng.randint(5, 40), rng.choice([1, 3, 10, 100])
        g2b = [rng.randrange(vb) if rng.random() < 0.8 else -1 for _ in range(vg)]
        pb = [rng.random() ** 3 for _ in range(vb)]
        pg = [rng.random() ** 6 for _ in range(vg)]
        pb = [x / sum(pb) for x in pb]
        pg = [x / sum(pg) for x in pg]
        step = make_step([pb], [pg], g2b=g2b, tau=1.1)
        methods._WARNED.clear()  # the tau > 1 warning comes once per config and process
        with pytest.warns(UserWarning, match="every step"):
            choice = make_policy({"name": "blendin", "tau": 1.1, "top_k": k}).decide(step)
        winners, alpha, best = reference_blend(pb, pg, g2b, k)
        assert choice.token.item() in winners, trial
        assert choice.alpha.item() == pytest.approx(alpha, abs=1e-5), trial
        assert choice.blend_prob.item() == pytest.approx(best, abs=1e-5), trial


def test_agreement_filter_and_confidence_competition():
    # rows: guidance top token has base rank 2 / rank 4 / is unmapped; guidance confidence varies
    g2b = [0, 1, 2, 3, 4, 5, -1]
    pb = [[0.30, 0.25, 0.20, 0.15, 0.10, 0.00]] * 3
    pg = [
        [0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.1],  # t_g = 1, base rank 2, p_g .9 > .3
        [0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0] + [],  # placeholder, replaced below
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    ]  # unmapped guidance token, p_g 1.0
    pg[1] = [0.1, 0.15, 0.15, 0.25, 0.15, 0.1, 0.1]  # t_g = 3, base rank 4, p_g .25 < .3
    step = make_step(pb, pg, g2b=g2b)
    assert step.guide_top_rank.tolist() == [2, 4, -1]
    af3 = make_policy({"name": "af", "agreement_k": 3}).decide(step)
    assert af3.applied.tolist() == [True, False, False]
    af5 = make_policy({"name": "af", "agreement_k": 5}).decide(step)
    assert af5.applied.tolist() == [True, True, False]
    assert af5.token.tolist() == [1, 3, 0]
    cc = make_policy({"name": "cc"}).decide(step)
    assert cc.applied.tolist() == [True, False, True]
    assert cc.token.tolist() == [1, 0, 6 + 6]  # base_size 6 + guidance id 6
    both = make_policy({"name": "af_cc", "agreement_k": 5}).decide(step)
    assert both.applied.tolist() == [True, False, False]


def test_cap_running_accepts_only_while_the_running_rate_is_under_the_cap():
    pb = [[0.3, 0.3, 0.4 - 1e-3, 1e-3]] * 4
    pg = [[0.0, 0.0, 0.0, 1.0]] * 4
    step = make_step(pb, pg, n_steps=[0, 10, 10, 20], n_applied=[0, 1, 2, 3])
    choice = make_policy({"name": "cap", "cap": 0.15, "mode": "running"}).decide(step)
    # rates before the step: -, .1, .2, .15 -> accept, accept, reject, reject (rate must be < cap)
    assert choice.applied.tolist() == [True, True, False, False]
    assert choice.token.tolist() == [3, 3, 2, 2]


def test_cap_latch_is_free_during_warmup_then_off_for_good():
    pb = [[0.3, 0.3, 0.4 - 1e-3, 1e-3]] * 5
    pg = [[0.0, 0.0, 0.0, 1.0]] * 5
    # steps 5 and 19 are in the 20-token warm-up; step 20 at rate .15 latches; step 30 at rate .1 is under
    # the cap but latched before; step 40 at rate .1 was never latched
    step = make_step(pb, pg, n_steps=[5, 19, 20, 30, 40], n_applied=[5, 19, 3, 3, 4])
    step.latched = torch.tensor([False, False, False, True, False])
    choice = make_policy({"name": "cap", "cap": 0.15}).decide(step)
    assert choice.applied.tolist() == [True, True, False, False, True]
    assert choice.latch.tolist() == [False, False, True, False, False]
    free = make_policy({"name": "cap", "cap": 0.0}).decide(step)
    assert free.applied.tolist() == [True] * 5, "cap = 0 means no cap"


def test_trace_facts_rank_and_top_p():
    pb = [[0.5, 0.3, 0.15, 0.05]]
    for guide_top, rank, in_top_p in [(0, 1, True), (1, 2, True), (2, 3, True), (3, 4, False)]:
        pg = [[0.0] * 4]
        pg[0][guide_top] = 1.0
        step = make_step(pb, pg, tau=0.9)  # facts are computed where the guidance is consulted
        assert step.guide_top_rank.item() == rank
        assert step.base_prob_of_guide_top.item() == pytest.approx(pb[0][guide_top])
        assert step.guide_top_in_base_top_p.item() == in_top_p  # .5+.3 < .9 so rank 3 is inside
    unconsulted = make_step(pb, [[0.0, 1.0, 0.0, 0.0]], tau=0.4)
    assert unconsulted.guide_top_rank.item() == -1 and unconsulted.base_top_p_size.item() == -1


def test_top_p_size_and_top_k_overlap_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25], [0.95, 0.03, 0.01, 0.01]])
    assert top_p_size(probs).tolist() == [3, 4, 1]  # .5+.3+.15 = .95 >= .9; .25*4; .95
    big = torch.softmax(torch.randn(3, 5000) * 0.1, dim=-1)  # flat: the set needs more than 256 tokens
    expected = [int((row.sort(descending=True).values.cumsum(0) < 0.9).sum()) + 1 for row in big]
    assert top_p_size(big).tolist() == expected
    vocab = vocab_map([0, 1, 2, -1, 3], 4)
    base = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    guide = torch.tensor([[0.15, 0.1, 0.05, 0.6, 0.1]])  # top-2 by guidance: g3 (no twin), then g0 -> b0
    assert top_k_overlap(base, guide, vocab, k=2).tolist() == [0.5]  # base top-2 {0, 1} vs {-, 0}


@pytest.mark.parametrize(
    "method, message",
    [
        ({"name": "nudgin"}, "unknown method 'nudgin'"),
        ({"name": "nudging", "tau": -0.1}, "method.tau=-0.1 is out of range"),
        ({"name": "nudging", "tau": "high"}, "method.tau='high' is not a number"),
        ({"name": "blendin", "alpha": 1.5}, "method.alpha=1.5 is out of range"),
        ({"name": "blendin", "alpha": -1}, "method.alpha=-1.0 is out of range"),
        ({"name": "blendin", "top_k": 0}, "method.top_k=0 must be a positive integer"),
        ({"name": "cap", "cap": 2}, "method.cap=2.0 is out of range"),
        ({"name": "cap", "mode": "soft"}, "method.mode='soft' must be one of: latch"),
        ({"name": "cap", "warmup": -1}, "method.warmup=-1 must be a non-negative integer"),
        ({"name": "probe", "alpha": 0.5}, "method probe does not take method.alpha"),
        ({"name": "nudging", "alpha": 0.5}, "method nudging does not take method.alpha"),
        ({"name": "af", "agreement_k": 2.5}, "method.agreement_k=2.5 must be a positive integer"),
        ({"name": "base", "tau": 0.4}, "method base does not take method.tau"),
        ({"name": "nudging", "tau": True}, "method.tau=True is not a number"),
        ({"name": "blendin", "top_k": 2.5}, "method.top_k=2.5 must be a positive integer, or null"),
    ],
)
def test_bad_method_configs_fail_with_the_key_named(method, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make_policy(method)


def test_defaults_are_the_papers():
    blend = make_policy({"name": "blendin"})
    assert (blend.tau, blend.alpha, blend.lam, blend.top_k) == (0.4, None, 0.1, 100)
    cap = make_policy({"name": "cap"})
    assert (cap.cap, cap.mode, cap.warmup) == (0.15, "latch", 20)
    assert make_policy({"name": "af"}).agreement_k == 5
    assert math.isclose(make_policy({"name": "nudging"}).tau, 0.4)


def test_the_exact_top_p_size_reads_nothing_from_the_device():
    """Past the top 256 tokens the size is found by bisection over the probability values, the same for
    every row and without a host read (on a GPU it runs inside the step): equal to sorting, ties
    included, and no `.item()`, `bool(tensor)` or `.tolist()` on the way."""
    from test_step_discipline import READS

    torch.manual_seed(0)
    flat = torch.softmax(torch.randn(6, 20000) * torch.tensor([0.05, 0.3, 1.0, 2.0, 4.0, 8.0])[:, None], -1)
    ties = torch.full((2, 20000), 1 / 20000)
    ties[1, :10] = 0.005  # ten equal tokens above a flat tail
    ties[1] /= ties[1].sum()
    probs = torch.cat([flat, ties])
    expected = [int((row.double().sort(descending=True).values.cumsum(0) < 0.9).sum()) + 1 for row in probs]
    originals = {name: getattr(torch.Tensor, name) for name in READS}
    reads = []

    def counting(name):
        def read(self, *args, **kwargs):
            reads.append(name)
            return originals[name](self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        sizes = top_p_size(probs, exact=True)
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
    assert not reads, reads
    assert sizes.tolist() == expected
    assert (sizes > 256).sum() >= 5, "most rows need the completion"
