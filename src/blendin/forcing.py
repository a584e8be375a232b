"""Teacher forcing (`method=forced`): walk both models along a given continuation instead of decoding.

Where decoding asks "what would the pair write?", teacher forcing asks "at each token of a known
good answer, what did each model believe?" For every base token of the continuation (a GSM8K gold
solution, a multiple-choice answer "C. <option>", or another run's outputs) it records the usual
trace (`engine.TRACE_COLUMNS`, guidance facts at EVERY position) plus:

- ref_id, base_prob_of_ref, base_rank_of_ref, guide_prob_of_ref, guide_rank_of_ref (ranks 1-based;
  the guidance side uses the reference token's guidance twin, -1/NaN when it has none);
- base_correct, guide_correct (= NUDGING's choice), and blend_correct_<w> for BlendIn's choice under
  several blend weights w: auto (Eq. 3), nolambda (Eq. 3 without the agreement bonus), entropy
  (H_b / (H_b + H_g): the more spread-out model gets the smaller share), a03, a05, a07 (fixed);
  alpha_<w> for the adaptive ones; base_entropy, guide_entropy (nats).

This is what `python -m analysis.calibration` reads to test alpha's premise: where the base is
unsure, does p_g / (p_b + p_g) tell which model is right?

Cost: one base forward pass per sample over prompt + continuation, and one guidance pass. With two
tokenizers the guidance must read, at each base position, exactly what decoding would show it: its
own tokenization of the text so far, which is not always a prefix of its tokenization of the whole
continuation (a word cut mid-token). Those few positions are appended to the same pass as short
branches that see only their shared prefix (a tree attention mask), so the guidance still runs once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .engine import TRACE_COLUMNS, Generation, check_generate_args
from .errors import ConfigError
from .facts import add_guidance_facts, rank_in
from .policies import Blend, Step
from .store import RunStore
from .streams import attention_masks
from .views import Detokenizer, TailTokenizer, _common_prefix_length

FIXED_ALPHAS = {"a03": 0.3, "a05": 0.5, "a07": 0.7}
WEIGHTS = ("auto", "nolambda", "entropy", *FIXED_ALPHAS)
FORCED_COLUMNS = (
    "ref_id",
    "base_prob_of_ref",
    "base_rank_of_ref",
    "guide_prob_of_ref",
    "guide_rank_of_ref",
    "base_correct",
    "guide_correct",
    "base_entropy",
    "guide_entropy",
    *(f"alpha_{w}" for w in ("auto", "nolambda", "entropy")),
    *(f"blend_correct_{w}" for w in WEIGHTS),
)
CHUNK = 64  # positions whose full distributions are held at once (262k-token vocabularies are large)


@dataclass(frozen=True)
class Forced:
    """tau: the uncertainty threshold the analysis splits on (recorded as `consulted`); lam, top_k:
    BlendIn's settings for the blend choices. source: "reference" (the benchmark's correct answer)
    or a run directory whose outputs are walked instead."""

    tau: float = 0.4
    lam: float = 0.1
    top_k: int | None = 100
    source: str = "reference"
    name: str = "forced"


class _RowWeights(Blend):
    """BlendIn with a weight given per row (the entropy weight)."""

    def __init__(self, weights: torch.Tensor, top_k):
        object.__setattr__(self, "weights", weights)
        super().__init__(tau=2.0, alpha=None, lam=0.0, top_k=top_k)

    def weight(self, p_base_top, p_guide_top, p_base_of_guide_top):
        return self.weights


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


class ForcedDecoder:
    """Teacher forcing behind the `methods.Decoder` interface; `generate` also takes the continuations to walk along
    (`methods.Method.inputs`)."""

    def __init__(self, base, policy: Forced, guidance, vocab):
        if guidance is None:
            raise ConfigError("method forced needs a guidance model")
        self.lead, self.policy, self.guidance, self.vocab = base, policy, guidance, vocab
        self.stats = {"lead_passes": 0, "guidance_passes": 0, "steps": 0}
        self._twins = None

    @property
    def base_to_guidance(self) -> torch.Tensor:
        """base id -> a guidance id with the same bytes (-1 where none)."""
        if self._twins is None:
            g2b = self.vocab.guidance_to_base
            size = self.vocab.base_size
            mapped = (g2b >= 0).nonzero().squeeze(-1)
            # several guidance ids may share a base twin: the lowest wins (a min-reduction, where plain
            # indexed writes of duplicates have no defined winner on a GPU)
            twins = torch.full((size,), size, dtype=torch.long, device=g2b.device)
            twins.scatter_reduce_(0, g2b[mapped], mapped, reduce="amin")
            twins = torch.where(twins == size, -1, twins)
            eos = sorted(self.guidance.eos_ids)
            for b in self.lead.eos_ids:  # the base EOS is the guidance's own end token, not an alias of it
                if b < twins.shape[0] and eos:
                    twins[b] = eos[0]
            self._twins = twins
        return self._twins

    def generate(
        self,
        prompts,
        max_new_tokens: int = 512,
        stop_strings=(),
        batch_size: int = 8,
        on_batch=None,
        keys=None,  # unused: nothing is sampled, the continuation is given
        *,
        continuations: Sequence[str | list[int]] | None = None,
    ) -> list[Generation]:
        """`methods.Decoder.generate`, walking along `continuations` (one per prompt: a text or base ids)."""
        check_generate_args(max_new_tokens, batch_size)
        if continuations is None or len(continuations) != len(prompts):
            raise ConfigError("teacher forcing needs one continuation per prompt")
        results = []
        for start in range(0, len(prompts), batch_size):
            idx = list(range(start, min(len(prompts), start + batch_size)))
            outs = [self._walk(prompts[i], continuations[i], max_new_tokens) for i in idx]
            results += outs
            if on_batch:
                on_batch(idx, outs)
        return results

    @torch.inference_mode()
    def _walk(self, prompt, continuation: str | list[int], max_new_tokens: int) -> Generation:
        """continuation: a text (walked as the base tokenizes it) or the base's token ids themselves."""
        base, guide = self.lead, self.guidance
        base_prompt, guide_prompt = base.prompt_ids(prompt), guide.prompt_ids(prompt)
        ids: list[int]
        if isinstance(continuation, str):
            ids = base.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        else:
            ids = continuation
        ref = list(ids)[:max_new_tokens]
        if not ref:
            return Generation("", [], 0, 0, 0, "eos", {c: [] for c in TRACE_COLUMNS + FORCED_COLUMNS})
        detok = Detokenizer(base.tokenizer, base_prompt[-1:])
        texts, stables = [""], [0]  # the text before each reference token, as decoding would have it
        for token in ref:
            texts.append(detok.push([token]))
            stables.append(detok.stable_length)
        self.stats["steps"] += len(ref)
        base_logits = self._base_logits(base_prompt, ref)
        guide_logits = self._guidance_logits(guide_prompt, ref, texts, stables)
        trace: dict[str, list] = {c: [] for c in TRACE_COLUMNS + FORCED_COLUMNS}
        for lo in range(0, len(ref), CHUNK):
            hi = min(len(ref), lo + CHUNK)
            rows = self._facts(base_logits[lo:hi], guide_logits[lo:hi], torch.tensor(ref[lo:hi]), lo)
            for key in trace:
                trace[key] += rows[key]
        trace["text_offset"] = [len(t) for t in texts[1:]]
        return Generation(
            texts[-1], ref, len(ref), 0, sum(trace["override"]), "forced", trace, n_consulted=sum(trace["consulted"])
        )

    def _base_logits(self, prompt: list[int], ref: list[int]) -> torch.Tensor:
        model = self.lead.model
        ids = torch.tensor([prompt + ref], device=self.lead.device)
        self.stats["lead_passes"] += 1
        keep = torch.arange(len(prompt) - 1, len(prompt) + len(ref) - 1, device=ids.device)
        return model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits[0]

    def _guidance_logits(self, prompt, ref, texts, stables) -> torch.Tensor:
        """Guidance logits [n, Vg] after exactly what it would read before each reference token."""
        self.stats["guidance_passes"] += 1
        if self.vocab.identical:  # it reads the base's own ids
            model = self.guidance.model
            ids = torch.tensor([prompt + ref[:-1]], device=self.guidance.device)
            keep = torch.arange(len(prompt) - 1, len(prompt) + len(ref) - 1, device=ids.device)
            return model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits[0]
        tail = TailTokenizer(self.guidance.tokenizer)
        reads = []  # the guidance's tokenization of the text before each reference token
        for text, stable in zip(texts[:-1], stables[:-1]):
            tail.update(text, stable)
            reads.append(list(tail.ids))
        tail.update(texts[-1], stables[-1])
        whole = list(tail.ids)
        trunk = prompt + whole
        tokens, positions, want, branches = list(trunk), list(range(len(trunk))), [], []
        for read in reads:
            shared = _common_prefix_length(read, whole)
            extra = read[shared:]
            if not extra:
                want.append(len(prompt) + shared - 1)
                continue
            branches.append((len(tokens), len(prompt) + shared, len(extra)))
            want.append(len(tokens) + len(extra) - 1)
            tokens += extra
            positions += list(range(len(prompt) + shared, len(prompt) + shared + len(extra)))
        size = len(tokens)
        visible = torch.ones(size, size).tril().bool()  # the trunk is causal and never sees a branch
        for first, prefix, length in branches:  # a branch sees its shared prefix and itself only
            rows = slice(first, first + length)
            visible[rows, :] = False
            visible[rows, :prefix] = True
            visible[rows, first : first + length] = torch.ones(length, length).tril().bool()
        device = self.guidance.device
        pos = torch.tensor([positions], device=device)
        attention = self.guidance.model.config._attn_implementation
        additive = next(self.guidance.model.parameters()).dtype if attention == "eager" else None
        masks = attention_masks(self.guidance.model, visible[None].to(device), pos, pos, additive)
        out = self.guidance.model(
            input_ids=torch.tensor([tokens], device=device),
            attention_mask=masks,
            position_ids=pos,
            use_cache=False,
            logits_to_keep=torch.tensor(want, device=device),
        )
        return out.logits[0]

    def _facts(self, base_logits, guide_logits, ref: torch.Tensor, first_step: int) -> dict[str, list]:
        pb = torch.softmax(base_logits.float(), dim=-1)
        pg = torch.softmax(guide_logits.float(), dim=-1)
        ref = ref.to(pb.device)
        top_prob, top_id = pb.max(-1)
        n = pb.shape[0]
        zeros = torch.zeros(n, dtype=torch.long, device=pb.device)
        step = Step(
            base_probs=pb,
            base_top_prob=top_prob,
            base_top_id=top_id,
            consulted=torch.ones(n, dtype=torch.bool, device=pb.device),
            n_steps=zeros,
            n_applied=zeros,
            vocab=self.vocab,
        )
        add_guidance_facts(step, pg)
        base_rank, _ = rank_in(pb, ref)
        twin = self.base_to_guidance[ref]
        guide_rank, _ = rank_in(pg, twin)
        guide_prob = pg.gather(-1, twin.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        h_b, h_g = entropy(pb), entropy(pg)
        policy = self.policy
        blends = {
            "auto": Blend(tau=2.0, alpha=None, lam=policy.lam, top_k=policy.top_k),
            "nolambda": Blend(tau=2.0, alpha=None, lam=0.0, top_k=policy.top_k),
            "entropy": _RowWeights(h_b / (h_b + h_g).clamp_min(1e-12), policy.top_k),
            **{k: Blend(tau=2.0, alpha=a, lam=policy.lam, top_k=policy.top_k) for k, a in FIXED_ALPHAS.items()},
        }
        nan = torch.full_like(top_prob, float("nan"))
        minus = torch.full_like(top_id, -1)
        assert step.guide_top_joint is not None, "add_guidance_facts has set it"
        mapped_top = torch.where(step.guide_top_joint < step.base_size, step.guide_top_joint, minus)
        columns = {
            "step": torch.arange(first_step, first_step + n),
            "base_top_prob": top_prob,
            "base_top_id": top_id,
            "consulted": top_prob < policy.tau,
            "applied": torch.zeros(n, dtype=torch.bool),
            "blend_prob": nan,
            "sample_prob": nan,  # the reference is given, not sampled
            "source": zeros,
            "chosen_id": ref,
            "override": ref != top_id,
            "guide_top_id": mapped_top,
            "guide_top_prob": step.guide_top_prob,
            "base_prob_of_guide_top": step.base_prob_of_guide_top,
            "guide_top_rank": step.located_rank,
            "guide_top_in_base_top_p": step.located_in_top_p,
            "guide_top_spelled": step.guide_top_spelled,
            "base_top_p_size": step.base_top_p_size,
            "top100_overlap": step.top100_overlap,
            "deferred_mass": torch.zeros(n),  # nothing is decoded, so nothing is handed over
            "guide_eos_prob": pg[:, sorted(self.guidance.eos_ids)].sum(-1),
            "ref_id": ref,
            "base_prob_of_ref": pb.gather(-1, ref.unsqueeze(-1)).squeeze(-1),
            "base_rank_of_ref": base_rank,
            "guide_prob_of_ref": torch.where(twin >= 0, guide_prob, nan),
            "guide_rank_of_ref": torch.where(twin >= 0, guide_rank, minus),
            "base_correct": top_id == ref,
            "guide_correct": step.guide_top_joint == ref,
            "base_entropy": h_b,
            "guide_entropy": h_g,
        }
        for key, blend in blends.items():
            choice = blend.decide(step)
            columns[f"blend_correct_{key}"] = choice.token == ref
            if key in ("auto", "nolambda", "entropy"):
                columns[f"alpha_{key}"] = choice.alpha
        columns["alpha"] = columns["alpha_auto"]
        out = {k: v.tolist() for k, v in columns.items()}
        out["text_offset"] = [0] * n  # filled by the caller
        return out


def references(run, samples) -> list[str]:
    """What teacher forcing walks along: each sample's reference answer, or a stored run's outputs.
    run: the `runspec.RunSpec`."""
    source = run.method.get("source", "reference")
    if source == "reference":
        missing = [s.id for s in samples if s.reference is None]
        if missing:
            raise ConfigError(
                f"benchmark {run.benchmark_name} has no reference answers to walk along "
                f"(e.g. {missing[0]}). Fix: use gsm8k, truthfulqa, mmlu or arc_challenge, or "
                "method.source=<a finished run directory> to walk along its outputs"
            )
        return [s.reference for s in samples]
    stored = RunStore(Path(source))
    if not stored.finished:
        raise ConfigError(
            f"method.source={source}: not a finished run directory (no metrics.json). Fix: give "
            "results/runs/<pair>/<benchmark>/<run_name>"
        )
    outputs = {r["id"]: r["output"] for r in stored.samples()}
    missing = [s.id for s in samples if s.id not in outputs]
    if missing:
        raise ConfigError(
            f"method.source={source} has no output for {len(missing)} of these samples "
            f"(e.g. {missing[0]}): use the same benchmark, subset and seed as that run"
        )
    return [outputs[s.id] for s in samples]


def guidance_reads(base_tokenizer, guidance_tokenizer, anchor: list[int], ref: list[int]) -> list[list[int]]:
    """What a guidance model with its own tokenizer reads along a base continuation `ref`, as decoding
    shows it: its tokenization of the text before each reference token (decoded after `anchor`, the
    base's last prompt token). `ForcedDecoder` walks the same texts; `blendin.likelihood` scores with them."""
    detok, tail = Detokenizer(base_tokenizer, anchor), TailTokenizer(guidance_tokenizer)
    reads, text, stable = [], "", 0
    for i in range(len(ref)):
        if i:
            text, stable = detok.push([ref[i - 1]]), detok.stable_length
        tail.update(text, stable)
        reads.append(list(tail.ids))
    return reads
