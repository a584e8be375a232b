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
