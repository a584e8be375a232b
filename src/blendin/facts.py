"""Facts about the guidance suggestion at a consulted step, derived from the two distributions.

The policies use the guidance top token, its probability, its base twin (the base token with the
same bytes) and P_b of that twin. The trace also records where the suggestion sits in the base
distribution, as the paper's vocabulary-overlap analysis (Figure 4, Table 4) defines it: its rank,
whether it lies inside the base's top-p (0.9) set, how large that set is, and how much the two
top-100 lists overlap. A guidance token without a single base twin is located by the first base
token of its spelling, as the reference code does (re-encode, take the first id), and flagged.
"""
from __future__ import annotations

import torch

TOP_P = 0.9  # the top-p set used by the vocabulary-overlap analysis (paper, Appendix A.1)
OVERLAP_K = 100  # the top-k lists BlendIn blends (paper, section 5)


def rank_in(probs: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based rank of `token` in each row of `probs` and whether it lies in the top-p set.

    Rank counts the tokens strictly more probable (ties share the better rank); the token is in the
    top-p set when the mass strictly above it is below TOP_P (the smallest prefix reaching 0.9).
    """
    p = probs.gather(-1, token.clamp_min(0).unsqueeze(-1))
    above = probs > p
    return above.sum(-1) + 1, (probs * above).sum(-1) < TOP_P


def top_p_size(probs: torch.Tensor, p: float = TOP_P) -> torch.Tensor:
    """Size of the smallest set of most probable tokens whose mass reaches p, per row.

    Sorting a 262k-token distribution is slow on a CPU, so try growing top-k prefixes first.
    """
    vocab = probs.shape[-1]
    k = min(256, vocab)
    while True:
        top = probs.topk(k, dim=-1).values.cumsum(-1)
        reached = top[:, -1] >= p
        if bool(reached.all()) or k == vocab:
            size = (top < p).sum(-1) + 1
            return size.clamp_max(k)
        k = min(vocab, k * 8)


def add_guidance_facts(step, guide_probs: torch.Tensor) -> None:
    """Fill the guidance fields of a `policies.Step` from the guidance distribution [B, Vg].

    The policies' fields cover every row; the trace-only facts (which scan the whole base
    distribution, costly with a 262k vocabulary) are computed for the consulted rows only.
    """
    vocab = step.vocab
    step.guide_probs = guide_probs
    step.guide_top_prob, step.guide_top_id = guide_probs.max(-1)
    mapped = vocab.guidance_to_base[step.guide_top_id]
    has_twin = mapped >= 0
    step.guide_top_joint = torch.where(has_twin, mapped, step.guide_top_id + step.base_size)
    pb_tg = step.base_probs.gather(-1, mapped.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    step.base_prob_of_guide_top = torch.where(has_twin, pb_tg, torch.zeros_like(pb_tg))
    minus = torch.full_like(step.guide_top_id, -1)
    no = torch.zeros_like(has_twin)
    step.guide_top_rank, step.guide_top_in_base_top_p = minus.clone(), no.clone()
    step.located_rank, step.located_in_top_p, step.guide_top_spelled = minus.clone(), no.clone(), no.clone()
    step.base_top_p_size = minus.clone()
    step.top100_overlap = torch.full_like(step.base_top_prob, float("nan"))
    rows = step.consulted.nonzero().squeeze(-1)
    if rows.numel() == 0:
        return
    base = step.base_probs[rows]
    # where the suggestion sits in the base distribution: its twin, else the first spelled token
    located = torch.where(has_twin[rows], mapped[rows], vocab.first_base_ids(step.guide_top_id[rows]))
    rank, in_top_p = rank_in(base, located)
    found = located >= 0
    twin = has_twin[rows]
    step.guide_top_rank[rows] = torch.where(twin, rank, -1)  # what the policies (af) use: twins only
    step.guide_top_in_base_top_p[rows] = twin & in_top_p
    step.located_rank[rows] = torch.where(found, rank, -1)
    step.located_in_top_p[rows] = found & in_top_p
    step.guide_top_spelled[rows] = ~twin & found
    step.base_top_p_size[rows] = top_p_size(base)
    step.top100_overlap[rows] = top_k_overlap(base, guide_probs[rows], vocab)


def top_k_overlap(base_probs: torch.Tensor, guide_probs: torch.Tensor, vocab, k: int = OVERLAP_K) -> torch.Tensor:
    """Share of the base's top-k tokens that are also in the guidance's top-k (by base twin)."""
    k_b, k_g = min(k, base_probs.shape[-1]), min(k, guide_probs.shape[-1])
    base_ids = base_probs.topk(k_b, dim=-1).indices
    guide_ids = vocab.guidance_to_base[guide_probs.topk(k_g, dim=-1).indices]  # -1 never matches a base id
    shared = (base_ids.unsqueeze(-1) == guide_ids.unsqueeze(1)).any(-1).sum(-1)
    return shared.float() / k_b
