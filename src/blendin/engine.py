"""The guided decoding loop: one lead model owns the output, a policy decides each token.

The lead model is the base model (or, for the solo methods, the one model that decodes alone). It
sees its own prompt rendering; the guidance model sees its own (chat template) and is kept in step
with the shared continuation by `GuidanceView`. Every method stops by the same rules: the lead's EOS
(a guidance EOS that wins a step maps to it), a stop string in the text, or `max_new_tokens` steps.
Each step records one trace row (see `TRACE_COLUMNS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .errors import ConfigError
from .policies import Greedy, Step
from .prompts import Prompt
from .streams import CachedStream, RecomputeStream

TRACE_COLUMNS = (
    "step", "base_top_prob", "base_top_id", "consulted", "applied", "alpha", "blend_prob", "source", "chosen_id",
    "override", "guide_top_id", "guide_top_prob", "base_prob_of_guide_top", "guide_top_rank",
    "guide_top_in_base_top_p",
)
TOP_P = 0.9  # the top-p set used by the vocabulary-overlap analysis (paper, Appendix A.1)


@dataclass
class Generation:
    """One sample's output. Rates are per step: a step chooses one token (a guidance-only token may
    be spelled as several base tokens but counts once). `text` ends before a stop string;
    `token_ids` holds every generated token (EOS excluded), those that spelled the stop string too."""

    text: str
    token_ids: list[int]
    n_tokens: int
    n_applied: int
    n_overrides: int
    stop_reason: str  # eos | stop_string | max_new_tokens
    trace: dict[str, list] = field(repr=False)

    @property
    def intervention_rate(self) -> float:
        return self.n_applied / self.n_tokens if self.n_tokens else 0.0

    @property
    def override_rate(self) -> float:
        return self.n_overrides / self.n_tokens if self.n_tokens else 0.0


def _stream(model, use_cache: bool):
    return (CachedStream if use_cache else RecomputeStream)(model.model, model.pad_id)


class GuidanceView:
    """The guidance model's view of the shared continuation, caught up only when it is consulted.

    Same tokenizer: the guidance reads the lead's ids. Different tokenizers: the continuation text
    is re-tokenized with the guidance tokenizer and the stream is cropped to the longest common
    prefix with what it has already read (transformers' assisted generation does the same across
    tokenizers); the guidance therefore always sees exactly `prompt + tokenize(text)`.
    """

    def __init__(self, guidance, prompts: list[list[int]], identical: bool, use_cache: bool):
        self.guidance, self.prompts, self.identical = guidance, prompts, identical
        self.stream = _stream(guidance, use_cache)
        self.started = False

    def target(self, row: int, ids: list[int], text: str) -> list[int]:
        if self.identical:
            return self.prompts[row] + ids
        return self.prompts[row] + list(self.guidance.tokenizer(text, add_special_tokens=False)["input_ids"])

    def logits(self, rows: Sequence[int], ids: list[list[int]], texts: list[str]) -> torch.Tensor:
        """Next-token logits of every row [B, V], caught up on `rows` first."""
        if not self.started:
            self.started = True
            return self.stream.start([self.target(r, ids[r], texts[r]) for r in range(len(self.prompts))])
        new, drop = [[] for _ in self.prompts], [0] * len(self.prompts)
        for r in rows:
            have, want = self.stream.tokens(r), self.target(r, ids[r], texts[r])
            common = _common_prefix(have, want)
            new[r], drop[r] = want[common:], len(have) - common
        return self.stream.step(new, drop)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Decoder:
    """Greedy decoding of `lead`, steered by `policy` with an optional guidance model.

    lead: the model that owns the output (the base for guided methods).
    guidance, vocab: the guidance model and the VocabMap from it to the lead; None for solo methods.
    use_cache: False recomputes every step from scratch (slow; the reference for tests).
    """

    def __init__(self, lead, policy=None, guidance=None, vocab=None, use_cache: bool = True):
        self.lead, self.guidance, self.vocab = lead, guidance, vocab
        self.policy = policy or Greedy()
        self.use_cache = use_cache
        if self.policy.tau > 0 and guidance is None:
            raise ConfigError(f"method {self.policy.name} needs a guidance model")

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, stop_strings: Sequence[str] = (),
                 batch_size: int = 8, on_batch: Callable[[list[int], list[Generation]], None] | None = None,
                 ) -> list[Generation]:
        """Decode every prompt; batches group prompts of similar length. Outputs keep input order.

        on_batch(indices, generations) is called after each batch (indices into `prompts`), so a
        caller can store finished samples as they come.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
        lead_ids = [self.lead.prompt_ids(p) for p in prompts]
        guide_ids = [self.guidance.prompt_ids(p) for p in prompts] if self.guidance is not None else None
        order = sorted(range(len(prompts)), key=lambda i: len(lead_ids[i]))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            outs = self._decode_batch([lead_ids[i] for i in batch],
                                      [guide_ids[i] for i in batch] if guide_ids else None,
                                      max_new_tokens, tuple(s for s in stop_strings if s))
            for i, out in zip(batch, outs):
                results[i] = out
            if on_batch:
                on_batch(batch, outs)
        return results

    @torch.inference_mode()
    def _decode_batch(self, lead_prompts, guide_prompts, max_new_tokens, stop_strings) -> list[Generation]:
        batch = len(lead_prompts)
        lead = _stream(self.lead, self.use_cache)
        view = None
        if guide_prompts is not None:
            view = GuidanceView(self.guidance, guide_prompts, self.vocab.identical, self.use_cache)
        anchors = [p[-1:] for p in lead_prompts]
        rows = [_Row(anchor) for anchor in anchors]
        logits = lead.start(lead_prompts)
        device = logits.device
        while True:
            active = [r for r in range(batch) if not rows[r].finished]
            if not active:
                break
            act = torch.tensor(active, device=device)
            probs = torch.softmax(logits[act], dim=-1)
            top_prob, top_id = probs.max(-1)
            consulted = top_prob < self.policy.tau
            step = Step(base_probs=probs, base_top_prob=top_prob, base_top_id=top_id, consulted=consulted,
                        n_steps=torch.tensor([rows[r].n_steps for r in active], device=device),
                        n_applied=torch.tensor([rows[r].n_applied for r in active], device=device), vocab=self.vocab)
            if bool(consulted.any()):
                guide_logits = view.logits(active, [row.ids for row in rows], [row.text for row in rows])
                self._add_guidance_facts(step, torch.softmax(guide_logits[act], dim=-1))
                choice = self.policy.decide(step)
            else:  # no row is uncertain: every method keeps the base's own token
                choice = Greedy().decide(step)
            new = self._record(step, choice, active, rows, max_new_tokens, stop_strings)
            if all(row.finished for row in rows):
                break
            logits = lead.step(new)
        return [row.result() for row in rows]

    def _add_guidance_facts(self, step: Step, guide_probs: torch.Tensor) -> None:
        step.guide_probs = guide_probs
        step.guide_top_prob, step.guide_top_id = guide_probs.max(-1)
        mapped = self.vocab.guidance_to_base[step.guide_top_id]
        step.guide_top_joint = torch.where(mapped >= 0, mapped, step.guide_top_id + step.base_size)
        pb_tg = step.base_probs.gather(-1, mapped.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        step.base_prob_of_guide_top = torch.where(mapped >= 0, pb_tg, torch.zeros_like(pb_tg))
        above = step.base_probs > step.base_prob_of_guide_top.unsqueeze(-1)
        rank = above.sum(-1) + 1
        step.guide_top_rank = torch.where(mapped >= 0, rank, torch.full_like(rank, -1))
        mass_above = (step.base_probs * above).sum(-1)
        step.guide_top_in_base_top_p = (mapped >= 0) & (mass_above < TOP_P)

    def _record(self, step: Step, choice, active, rows, max_new_tokens, stop_strings) -> list[list[int]]:
        """Trace the step, apply the choice to each row, check stopping; return tokens to feed."""
        size = step.base_size
        consulted = step.consulted
        has_g = step.guide_top_id is not None
        nan = torch.full_like(step.base_top_prob, math.nan)
        minus = torch.full_like(step.base_top_id, -1)
        mapped_top = torch.where(step.guide_top_joint < size, step.guide_top_joint, minus) if has_g else minus
        columns = {
            "base_top_prob": step.base_top_prob, "base_top_id": step.base_top_id, "consulted": consulted,
            "applied": choice.applied, "alpha": choice.alpha, "blend_prob": choice.blend_prob, "source": choice.source,
            "joint": choice.token,
            "guide_top_id": torch.where(consulted, mapped_top, minus),
            "guide_top_prob": torch.where(consulted, step.guide_top_prob, nan) if has_g else nan,
            "base_prob_of_guide_top": torch.where(consulted, step.base_prob_of_guide_top, nan) if has_g else nan,
            "guide_top_rank": torch.where(consulted, step.guide_top_rank, minus) if has_g else minus,
            "guide_top_in_base_top_p": (consulted & step.guide_top_in_base_top_p) if has_g else torch.zeros_like(consulted),
        }
        values = {k: v.tolist() for k, v in columns.items()}
        new = [[] for _ in rows]
        eos_ids = self.lead.eos_ids
        for j, r in enumerate(active):
            row = rows[r]
            joint = values["joint"][j]
            ids = [joint] if joint < size else self.vocab.base_ids_for_guidance_token(joint - size)
            entry = {k: values[k][j] for k in columns if k != "joint"}
            entry.update(step=row.n_steps, chosen_id=joint if joint < size else -1,
                         override=joint != values["base_top_id"][j])
            row.add(entry)
            if len(ids) == 1 and ids[0] in eos_ids:
                row.finish("eos")
                continue
            row.ids.extend(ids)
            row.text = self._text_of(row)
            if stop_strings and any(s in row.text for s in stop_strings):
                row.finish("stop_string")
            elif row.n_steps >= max_new_tokens:
                row.finish("max_new_tokens")
            else:
                new[r] = ids
            if row.finished and stop_strings:
                row.text = _cut(row.text, stop_strings)
        return new

    def _text_of(self, row: "_Row") -> str:
        """Decode the continuation; the prompt's last token is decoded along so a leading space
        survives decoders that strip one at the start."""
        tok = self.lead.tokenizer
        both = tok.decode(row.anchor + row.ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        head = tok.decode(row.anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if both.startswith(head):
            return both[len(head):]
        return tok.decode(row.ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _cut(text: str, stop_strings) -> str:
    hits = [text.find(s) for s in stop_strings if s and s in text]
    return text[:min(hits)] if hits else text


class _Row:
    """Book-keeping of one row while it decodes."""

    def __init__(self, anchor: list[int]):
        self.anchor, self.ids, self.text = anchor, [], ""
        self.n_steps = self.n_applied = self.n_overrides = 0
        self.finished, self.stop_reason = False, ""
        self.trace = {c: [] for c in TRACE_COLUMNS}

    def add(self, entry: dict) -> None:
        for key, value in entry.items():
            self.trace[key].append(value)
        self.n_steps += 1
        self.n_applied += bool(entry["applied"])
        self.n_overrides += bool(entry["override"])

    def finish(self, reason: str) -> None:
        self.finished, self.stop_reason = True, reason

    def result(self) -> Generation:
        return Generation(self.text, list(self.ids), self.n_steps, self.n_applied, self.n_overrides,
                          self.stop_reason, self.trace)
