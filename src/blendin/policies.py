"""Decoding methods as small, pure policies.

At each step the engine hands a policy a `Step`: the base model's next-token distribution for every
row still decoding, the guidance model's distribution where it was consulted, and the facts both
derive from them. The policy returns a `Choice` per row: the token and whether guidance was applied.
Policies hold no state; anything that depends on the past (the cap) reads counts from the `Step`.
The engine calls a policy only on steps where at least one row consulted the guidance (u < tau);
on the other steps every method keeps the base model's own top token.

Tokens are named in the *joint* id space: `0 <= id < base_size` is a base token; `base_size + g` is
guidance token `g` that has no base equivalent (the engine spells its text with base tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .vocab import VocabMap

SOURCE_BASE, SOURCE_GUIDANCE, SOURCE_BLEND = 0, 1, 2
SOURCE_NAMES = {SOURCE_BASE: "base", SOURCE_GUIDANCE: "guidance", SOURCE_BLEND: "blend"}


@dataclass
class Step:
    """What a policy sees for the B rows decided this step (tensors of length B unless noted)."""

    base_probs: torch.Tensor  # [B, Vb] float32
    base_top_prob: torch.Tensor
    base_top_id: torch.Tensor
    consulted: torch.Tensor  # bool: guidance distribution available (base top-1 prob < tau)
    n_steps: torch.Tensor  # tokens generated so far in each row
    n_applied: torch.Tensor  # steps so far where guidance was applied
    guide_probs: torch.Tensor | None = None  # [B, Vg]; rows not consulted hold garbage
    guide_top_prob: torch.Tensor | None = None
    guide_top_id: torch.Tensor | None = None  # guidance vocabulary id
    guide_top_joint: torch.Tensor | None = None  # joint id of the guidance top token
    guide_top_rank: torch.Tensor | None = None  # 1-based rank in the base distribution, -1 if unmapped
    base_prob_of_guide_top: torch.Tensor | None = None  # P_b(t_g), 0 if unmapped
    guide_top_in_base_top_p: torch.Tensor | None = None  # t_g inside the base's top-p (0.9) set
    vocab: VocabMap | None = None
    latched: torch.Tensor | None = None  # bool: the cap latch has switched guidance off for this row
    # trace-only facts (see blendin.facts): where the suggestion sits in the base distribution
    located_rank: torch.Tensor | None = None
    located_in_top_p: torch.Tensor | None = None
    guide_top_spelled: torch.Tensor | None = None
    base_top_p_size: torch.Tensor | None = None
    top100_overlap: torch.Tensor | None = None
    # proxy-tuning's third model: the guidance's untuned twin, read along the guidance's own tokens
    untuned_probs: torch.Tensor | None = None  # [B, Vg]; rows not consulted hold garbage

    _tops: dict = field(default_factory=dict, repr=False)

    @property
    def base_size(self) -> int:
        return self.base_probs.shape[-1]

    def top(self, which: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most probable tokens (probabilities, ids) of the "base" or "guide" distribution, sorted.
        Computed once per step, as wide as the widest use (the base's top-p facts look at 256)."""
        probs = self.base_probs if which == "base" else self.guide_probs
        assert probs is not None, "the guidance's distribution is read only on steps that have it"
        k = min(k, probs.shape[-1])
        if which not in self._tops or self._tops[which][0].shape[-1] < k:
            self._tops[which] = probs.topk(min(max(k, 256 if which == "base" else k), probs.shape[-1]), dim=-1)
        values, ids = self._tops[which]
        return values[..., :k].contiguous(), ids[..., :k].contiguous()


@dataclass
class Choice:
    token: torch.Tensor  # joint ids
    applied: torch.Tensor  # bool
    source: torch.Tensor  # SOURCE_* per row
    alpha: torch.Tensor  # blend weight, NaN where no blend happened
    blend_prob: torch.Tensor  # renormalized blended probability of the chosen token, NaN where no blend
    latch: torch.Tensor | None = None  # bool: rows whose guidance is switched off from now on (cap latch)
    # share of the base's probability handed to the guidance this step (`deferred_mass`); None: the
    # engine reads it off the source (1 where the guidance took the step, alpha where BlendIn blended)
    deferred: torch.Tensor | None = None


def _choose(step: Step, take_guidance: torch.Tensor, source: int = SOURCE_GUIDANCE) -> Choice:
    token = step.base_top_id.clone()
    if step.guide_top_joint is not None:
        token = torch.where(take_guidance, step.guide_top_joint, token)
    src = torch.where(take_guidance, source, SOURCE_BASE)
    nan = torch.full_like(step.base_top_prob, math.nan)
    return Choice(token, take_guidance.clone(), src, nan, nan.clone())


@dataclass(frozen=True)
class Greedy:
    """One model alone, greedy (methods base, guidance, aligned)."""

    name: str = "base"
    sources: ClassVar[tuple] = (SOURCE_BASE,)  # the sources its Choice can name: what sampling draws from
    tau: float = 0.0  # never consults

    def decide(self, step: Step) -> Choice:
        return _choose(step, torch.zeros_like(step.consulted))


@dataclass(frozen=True)
class Nudging:
    """Where the base's top-1 prob u < tau, take the guidance model's top token (Fei et al., 2025)."""

    tau: float = 0.4
    name: str = "nudging"
    sources: ClassVar[tuple] = (SOURCE_BASE, SOURCE_GUIDANCE)

    def decide(self, step: Step) -> Choice:
        return _choose(step, step.consulted)


@dataclass(frozen=True)
class Probe:
    """Observe only: consult the guidance where u < tau and record what it suggests, never apply it.

    The output is the base model's own greedy text; the trace holds the guidance facts at every
    uncertain step (the protocol of the paper's vocabulary-overlap analysis, and `blendin.diagnose`).
    """

    tau: float = 0.4
    name: str = "probe"
    sources: ClassVar[tuple] = (SOURCE_BASE,)

    def decide(self, step: Step) -> Choice:
        return _choose(step, torch.zeros_like(step.consulted))


@dataclass(frozen=True)
class Capped:
    """NUDGING with an intervention budget `cap` (paper, Table 3). Two modes:

    latch (the paper's, and the reference code's): no cap for the first `warmup` tokens; after that,
        the first uncertain step at which applied / generated >= cap switches guidance off for the
        rest of the sample ("rejecting all guidance once the threshold is exceeded").
    running: guidance is accepted only while applied / generated < cap, counted before the step;
        once the rate reaches the cap the base decides alone until confident tokens bring it back under.
    cap = 0 means no cap at all (plain NUDGING).
    """

    tau: float = 0.4
    cap: float = 0.15
    mode: str = "latch"
    warmup: int = 20
    name: str = "cap"
    sources: ClassVar[tuple] = (SOURCE_BASE, SOURCE_GUIDANCE)
    history: ClassVar[bool] = True  # it reads the counts of its own earlier choices (Step.n_applied, latched)

    def decide(self, step: Step) -> Choice:
        if self.cap == 0:
            return _choose(step, step.consulted)
        rate_reached = step.n_applied.float() >= self.cap * step.n_steps.float()
        if self.mode == "running":
            return _choose(step, step.consulted & ((step.n_steps == 0) | ~rate_reached))
        latch = step.consulted & (step.n_steps >= self.warmup) & rate_reached
        latched = latch if step.latched is None else latch | step.latched
        choice = _choose(step, step.consulted & ~latched)
        choice.latch = latch
        return choice


@dataclass(frozen=True)
class Filtered:
    """Nudging whose suggestions must pass discrete filters (paper, Appendix A.3).

    agreement_k: Agreement Filter, accept only if the guidance top token is in the base's top-k.
    confidence: Confidence Competition, accept only if the guidance top-1 prob exceeds the base's.
    """

    tau: float = 0.4
    agreement_k: int | None = 5
    confidence: bool = False
    name: str = "af"
    sources: ClassVar[tuple] = (SOURCE_BASE, SOURCE_GUIDANCE)

    def decide(self, step: Step) -> Choice:
        accept = step.consulted.clone()
        if self.agreement_k is not None:
            rank = step.guide_top_rank
            assert rank is not None, "a policy decides with guidance facts (facts.add_guidance_facts)"
            accept &= (rank >= 1) & (rank <= self.agreement_k)
        if self.confidence:
            accept &= step.guide_top_prob > step.base_top_prob
        return _choose(step, accept)


@dataclass(frozen=True)
class Blend:
    """BlendIn: where u < tau, P = alpha * P_g + (1 - alpha) * P_b, then argmax (paper, Eq. 3-5).

    alpha: None for the adaptive weight of Eq. 3, clip(p_g / (p_b + p_g) + lam * P_b(t_g), 0, 1),
        where p_b, p_g are the two top-1 probabilities and t_g the guidance top token; or a fixed number.
    top_k: blend the union of both models' top-k lists, a token missing from a list counting 0 there
        (the reference implementation, k = 100); None blends the full shared vocabulary.
    A consulted step counts as applied even when the blend keeps the base's own token.
    """

    tau: float = 0.4
    alpha: float | None = None
    lam: float = 0.1
    top_k: int | None = 100
    name: str = "blendin"
    sources: ClassVar[tuple] = (SOURCE_BASE, SOURCE_BLEND)

    def decide(self, step: Step) -> Choice:
        # every row is blended with the same tensor operations; rows not consulted keep the base's token
        blend = _blend_full if self.top_k is None else _blend_top_k
        token, alpha, prob = blend(step.base_probs, step.guide_probs, step, self)
        consulted = step.consulted
        nan = torch.full_like(alpha, math.nan)
        return Choice(
            torch.where(consulted, token, step.base_top_id),
            consulted.clone(),
            torch.where(consulted, SOURCE_BLEND, SOURCE_BASE),
            torch.where(consulted, alpha, nan),
            torch.where(consulted, prob, nan),
        )

    def distribution(self, step: Step) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The blend as a distribution to sample from: (candidate joint ids or None for the base
        vocabulary's columns, probabilities), each token once, summing to 1 per row."""
        if self.top_k is None:
            return None, _full_blend(step.base_probs, step.guide_probs, step, self)[0]
        candidates, blended, _, total = _top_k_blend(step.base_probs, step.guide_probs, step, self)
        once = torch.where(_first_copies(candidates), blended, torch.zeros_like(blended))
        return candidates, once / total.unsqueeze(-1).clamp_min(1e-30)

    def weight(self, p_base_top, p_guide_top, p_base_of_guide_top) -> torch.Tensor:
        if self.alpha is not None:
            return torch.full_like(p_base_top, float(self.alpha))
        ratio = p_guide_top / (p_base_top + p_guide_top)
        return (ratio + self.lam * p_base_of_guide_top).clamp(0.0, 1.0)


def _blend_full(pb, pg, step: Step, policy: Blend):
    """Blend over the shared vocabulary (base ids some guidance token maps to), renormalized."""
    blended, alpha = _full_blend(pb, pg, step, policy)
    prob, token = blended.max(-1)
    return token, alpha, prob


def _full_blend(pb, pg, step: Step, policy: Blend) -> tuple[torch.Tensor, torch.Tensor]:
    """The blended distribution over the base vocabulary [R, Vb] (0 off the shared vocabulary), and alpha."""
    vocab = step.vocab
    assert vocab is not None, "a blend needs the pair's vocabulary map"
    pg_on_base = vocab.guidance_probs_on_base(pg)
    shared = vocab.shared_base_mask
    alpha = policy.weight(step.base_top_prob, step.guide_top_prob, step.base_prob_of_guide_top)
    a = alpha.unsqueeze(-1)
    blended = a * pg_on_base + (1 - a) * pb * shared
    return blended / blended.sum(-1, keepdim=True).clamp_min(1e-30), alpha


def _blend_top_k(pb, pg, step: Step, policy: Blend):
    """Blend the union of both top-k lists, keyed by token (joint ids), as the reference does."""
    candidates, blended, alpha, total = _top_k_blend(pb, pg, step, policy)
    prob, best = blended.max(-1, keepdim=True)
    return candidates.gather(-1, best).squeeze(-1), alpha, prob.squeeze(-1) / total.clamp_min(1e-30)


def _top_k_blend(pb, pg, step: Step, policy: Blend):
    """The union's candidates [R, kb + kg] (joint ids; a token in both lists appears twice), each one's
    blended mass, alpha, and the union's total mass."""
    k_b = min(policy.top_k, pb.shape[-1])
    k_g = min(policy.top_k, pg.shape[-1])
    base_p, base_ids = step.top("base", k_b)
    guide_p, guide_gids = step.top("guide", k_g)
    guide_ids = joint_ids(guide_gids, step)
    candidates = torch.cat([base_ids, guide_ids], dim=-1)  # [R, kb + kg]
    # P_b and P_g of each candidate, 0 where the candidate is not in that model's list
    p_base = _list_mass(candidates, base_ids, base_p)
    p_guide = _list_mass(candidates, guide_ids, guide_p)
    # P_b(t_g) as the reference sees it: 0 when t_g is outside the base's top-k list
    pb_tg = p_base[:, k_b]  # the first guidance candidate is the guidance top token
    alpha = policy.weight(step.base_top_prob, step.guide_top_prob, pb_tg)
    a = alpha.unsqueeze(-1)
    blended = a * p_guide + (1 - a) * p_base
    # total mass over the union: each list's probabilities count once, whatever the overlap
    total = a.squeeze(-1) * guide_p.sum(-1) + (1 - a.squeeze(-1)) * base_p.sum(-1)
    return candidates, blended, alpha, total


def _first_copies(ids: torch.Tensor) -> torch.Tensor:
    """True at the first occurrence of each id in its row."""
    order = ids.argsort(dim=-1, stable=True)
    sorted_ids = ids.gather(-1, order)
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    return torch.zeros_like(first).scatter(-1, order, first)


def _list_mass(candidates: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Per row, the probability each candidate has in the list (ids, probs), 0 where it is absent; an
    id listed twice (two guidance tokens with one base twin) counts with both. By sorted search, not
    by comparing every candidate with every entry."""
    order = ids.argsort(-1)
    sorted_ids, sorted_p = ids.gather(-1, order), probs.gather(-1, order)
    first = torch.searchsorted(sorted_ids, sorted_ids)  # where each id's first copy sits
    merged = torch.zeros_like(sorted_p).scatter_add_(-1, first, sorted_p)
    at = torch.searchsorted(sorted_ids, candidates).clamp_max(ids.shape[-1] - 1)
    return torch.where(sorted_ids.gather(-1, at) == candidates, merged.gather(-1, at), torch.zeros_like(merged[:, :1]))


def joint_ids(guidance_ids: torch.Tensor, step: Step) -> torch.Tensor:
    assert step.vocab is not None, "guidance ids map to base ids through the pair's vocabulary map"
    mapped = step.vocab.guidance_to_base[guidance_ids]
    return torch.where(mapped >= 0, mapped, guidance_ids + step.base_size)


# ---- token-wise deferral (KAD) ---------------------------------------------------------------------

# The deferral rules of Hammal, Zweigenbaum and Corro (KAD, EACL 2026), named as their code names them
# (`DeferralRule` in src/model/cascade_generation.py). d(y) = 1 defers base token y; `threshold` is
# their `alpha`. p: the base's distribution, q: the guidance's, on base tokens where a rule reads q(y).
KAD_RULES = {
    "max": "d = 1 for every token where max p < threshold: NUDGING (tau = threshold)",
    "token_wise": "d(y) = [p(y) < threshold]: defer each unlikely token",
    "token_v2": "d(y) = [p(y) < max p - threshold]: defer the tokens far below the base's top token",
    "token_max": "d(y) = [p(y) < max p]: defer every token but the base's top one (token_v2 at 0)",
    "max_q_minus": "d(y) = [p(y) < max q - threshold]: defer below the guidance's confidence, less a margin",
    "max_q_plus": "d(y) = [p(y) < max q + threshold]: defer below the guidance's confidence, plus a margin",
    "max_p_plus": "d(y) = [q(y) < max p + threshold]: defer the tokens the guidance does not rate above the base's top",
    "minus_max_p_plus": "d(y) = [q(y) > max p + threshold]: defer the tokens the guidance rates above the base's top",
    "budget_lr": "defer the least likely tokens while their mass stays within the budget `threshold` (the primal "
    "knapsack approximation)",
}


@dataclass(frozen=True)
class Deferral:
    """Token-wise deferral (KAD): next-token distribution (1 - d) * p + q * sum_y d(y) p(y), where d is the
    rule's deferral set on base tokens. The base keeps the mass of the tokens it does not defer; the
    deferred mass goes to the guidance's distribution, whose tokens without a single base twin keep their
    share (as joint ids, spelled with base tokens when chosen). Greedy decoding takes its argmax;
    sampling draws from it (`distribution`). The guidance is read at every step (`tau` > 1), since
    the rules defer some mass almost everywhere; a step counts as applied where it defers any mass."""

    rule: str = "token_wise"
    threshold: float = 0.4
    name: str = "kad_token_wise"
    tau: float = field(default=2.0, init=False)  # consult at every step
    sources: ClassVar[tuple] = (SOURCE_BASE, SOURCE_BLEND)

    def deferred_set(self, step: Step) -> torch.Tensor:
        """d [R, Vb] as 0/1 floats, exactly as the rule reads p and q."""
        p, lam = step.base_probs, self.threshold
        top_p = p.max(-1, keepdim=True).values
        rule = self.rule
        if rule == "max":
            return (top_p < lam).expand_as(p).float()
        if rule == "token_wise":
            return (p < lam).float()
        if rule == "token_v2":
            return (p < top_p - lam).float()
        if rule == "token_max":
            return (p < top_p).float()
        if rule == "budget_lr":
            return _budget(p, lam)
        assert step.guide_probs is not None and step.vocab is not None, "these rules read the guidance"
        top_q = step.guide_probs.max(-1, keepdim=True).values
        if rule == "max_q_minus":
            return (p < top_q - lam).float()
        if rule == "max_q_plus":
            return (p < top_q + lam).float()
        q = step.vocab.guidance_probs_on_base(step.guide_probs)  # q(y) of each base token
        if rule == "max_p_plus":
            return (q < top_p + lam).float()
        if rule == "minus_max_p_plus":
            return (q > top_p + lam).float()
        raise ValueError(f"unknown deferral rule {rule!r}")

    def distribution(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """(joint ids [R, Vb + Vg], probabilities): the base's columns, then each guidance token without
        a base twin (its id base_size + g); each token once, summing to 1 per row."""
        mixed, unmapped, _ = self._mixture(step)
        vb, vg = mixed.shape[-1], unmapped.shape[-1]
        ids = torch.cat([torch.arange(vb, device=mixed.device), vb + torch.arange(vg, device=mixed.device)])
        return ids.expand(mixed.shape[0], -1), torch.cat([mixed, unmapped], dim=-1)

    def _mixture(self, step: Step):
        """The mixture on base ids [R, Vb], on guidance tokens without a twin [R, Vg], and the deferred mass."""
        assert step.guide_probs is not None and step.vocab is not None, "deferral hands mass to the guidance"
        p, q = step.base_probs, step.guide_probs
        d = self.deferred_set(step)
        mass = (d * p).sum(-1, keepdim=True)
        mixed = (1 - d) * p + mass * step.vocab.guidance_probs_on_base(q)
        unmapped = mass * q * (step.vocab.guidance_to_base < 0)
        return mixed, unmapped, mass.squeeze(-1)

    def decide(self, step: Step) -> Choice:
        mixed, unmapped, mass = self._mixture(step)
        best, token = torch.cat([mixed, unmapped], dim=-1).max(-1)
        applied = step.consulted & (mass > 0)
        nan = torch.full_like(mass, math.nan)
        return Choice(
            torch.where(applied, token, step.base_top_id),
            applied,
            torch.where(applied, SOURCE_BLEND, SOURCE_BASE),
            nan,
            torch.where(applied, best, nan),
            deferred=torch.where(step.consulted, mass, torch.zeros_like(mass)),
        )


def _budget(p: torch.Tensor, budget: float) -> torch.Tensor:
    """KAD's budget_lr: the least likely tokens (the highest -log p first) are deferred while their
    running mass stays within the budget; every token when the whole distribution fits in it."""
    order = p.argsort(dim=-1, stable=True)  # ascending p: descending -log p
    within = p.gather(-1, order).cumsum(-1) <= budget
    return torch.zeros_like(p).scatter(-1, order, within.float())


# ---- proxy-tuning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyTuning:
    """Proxy-tuning (Liu et al., 2024): softmax(s_base + alpha * (s_tuned - s_untuned)) over the shared
    vocabulary, where s are logits (log-probabilities: a constant per row cancels in the softmax), the
    tuned model is the guidance and the untuned one its twin before tuning (`pair.guidance_untuned`).
    alpha = 1 is the published rule; alpha scales the steer. Base tokens without a guidance twin get
    no probability, and a base token with several guidance twins reads their summed probability.
    Every step is a blend of the three models: applied everywhere."""

    alpha: float = 1.0
    name: str = "proxy_tuning"
    tau: float = field(default=2.0, init=False)  # the guidance models are read at every step
    sources: ClassVar[tuple] = (SOURCE_BASE, SOURCE_BLEND)

    def distribution(self, step: Step) -> tuple[None, torch.Tensor]:
        """(None: the base vocabulary's columns, probabilities [R, Vb]) summing to 1 per row."""
        vocab = step.vocab
        assert vocab is not None and step.guide_probs is not None and step.untuned_probs is not None, (
            "proxy-tuning reads the guidance and its untuned twin"
        )
        tuned = vocab.guidance_probs_on_base(step.guide_probs)
        untuned = vocab.guidance_probs_on_base(step.untuned_probs)
        shared = vocab.shared_base_mask
        tiny = torch.finfo(tuned.dtype).tiny
        steer = tuned.clamp_min(tiny).log() - untuned.clamp_min(tiny).log()
        scores = step.base_probs.clamp_min(tiny).log() + self.alpha * steer
        return None, torch.softmax(scores.masked_fill(~shared, -math.inf), dim=-1)

    def decide(self, step: Step) -> Choice:
        _, probs = self.distribution(step)
        best, token = probs.max(-1)
        consulted = step.consulted
        nan = torch.full_like(best, math.nan)
        return Choice(
            torch.where(consulted, token, step.base_top_id),
            consulted.clone(),
            torch.where(consulted, SOURCE_BLEND, SOURCE_BASE),
            nan,
            torch.where(consulted, best, nan),
            deferred=nan.clone(),  # no mass is handed over: a product of the three models' distributions
        )
