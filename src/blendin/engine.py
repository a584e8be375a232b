"""The guided decoding loop: one lead model owns the output, a policy decides each token.

The lead model is the base model (or, for the solo methods, the one model that decodes alone). It
sees its own prompt rendering; the guidance model sees its own (chat template) and is kept in step
with the shared continuation by a `TokenView`. Every method stops by the same rules: the lead's EOS
(a guidance EOS that wins a step maps to it), a stop string in the text, or `max_new_tokens` steps.
Each step records one trace row (see `TRACE_COLUMNS`).

Batches are continuous: a row that finishes leaves the batch at once (it costs no more compute) and
the next prompt takes its place, prefilled on its own and merged in. The guidance model runs only on
steps where some row is uncertain, and then catches every row up in one batched pass.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .errors import ConfigError
from .facts import add_guidance_facts
from .policies import Greedy, Step
from .prompts import Prompt
from .views import Detokenizer, TokenView

TRACE_COLUMNS = (
    "step", "base_top_prob", "base_top_id", "consulted", "applied", "alpha", "blend_prob", "source", "chosen_id",
    "override", "guide_top_id", "guide_top_prob", "base_prob_of_guide_top", "guide_top_rank",
    "guide_top_in_base_top_p", "guide_top_spelled", "base_top_p_size", "top100_overlap", "text_offset",
)
BASE_VIEWS = ("ids", "text")


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
    stop_reason: str  # eos | stop_string | max_new_tokens (| rounds | repeats for nudging_words)
    trace: dict[str, list] = field(repr=False)
    n_consulted: int = 0
    extras: dict = field(default_factory=dict)  # method-specific counts (e.g. word-level NUDGING's words)

    @property
    def intervention_rate(self) -> float:
        return self.n_applied / self.n_tokens if self.n_tokens else 0.0

    @property
    def override_rate(self) -> float:
        return self.n_overrides / self.n_tokens if self.n_tokens else 0.0

    @property
    def consult_rate(self) -> float:
        return self.n_consulted / self.n_tokens if self.n_tokens else 0.0


def check_generate_args(max_new_tokens, batch_size) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")


def schedule(n_prompts: int, lengths: Sequence[int], batch_size: int, admit: Callable[[list[int]], None],
             step: Callable[[], list], active: Callable[[], int], on_done: Callable[[list], None]) -> None:
    """Continuous batching: admit prompts (shortest first) into free slots, step, report finished rows."""
    queue = deque(sorted(range(n_prompts), key=lambda i: lengths[i]))
    while queue or active():
        free = batch_size - active()
        if queue and free > 0:
            admit([queue.popleft() for _ in range(min(free, len(queue)))])
        finished = step()
        if finished:
            on_done(finished)


class Decoder:
    """Greedy decoding of `lead`, steered by `policy` with an optional guidance model.

    lead: the model that owns the output (the base for guided methods).
    guidance, vocab: the guidance model and the VocabMap from it to the lead; None for solo methods.
    use_cache: False recomputes every step from scratch (slow; the reference for tests).
    base_view: "ids" (the lead reads its own token ids) or "text" (the lead re-reads the tokenized text
        every step, as the reference code's text-based servers did).
    """

    def __init__(self, lead, policy=None, guidance=None, vocab=None, use_cache: bool = True, base_view: str = "ids"):
        self.lead, self.guidance, self.vocab = lead, guidance, vocab
        self.policy = policy or Greedy()
        self.use_cache = use_cache
        if base_view not in BASE_VIEWS:
            raise ConfigError(f"base_view={base_view!r} must be one of {', '.join(BASE_VIEWS)}")
        self.base_view = base_view
        if self.policy.tau > 0 and guidance is None:
            raise ConfigError(f"method {self.policy.name} needs a guidance model")
        self.stats = {"lead_passes": 0, "guidance_passes": 0, "steps": 0}

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, stop_strings: Sequence[str] = (),
                 batch_size: int = 8, on_batch: Callable[[list[int], list[Generation]], None] | None = None,
                 ) -> list[Generation]:
        """Decode every prompt; outputs keep input order.

        on_batch(indices, generations) is called whenever rows finish (indices into `prompts`), so a
        caller can store finished samples as they come.
        """
        check_generate_args(max_new_tokens, batch_size)
        lead_ids = [self.lead.prompt_ids(p) for p in prompts]
        guide_ids = [self.guidance.prompt_ids(p) for p in prompts] if self.guidance is not None else None
        batch = _Batch(self, max_new_tokens, tuple(s for s in stop_strings if s))
        results: list[Generation | None] = [None] * len(prompts)

        def done(rows):
            outs = [row.result() for row in rows]
            for row, out in zip(rows, outs):
                results[row.index] = out
            if on_batch:
                on_batch([row.index for row in rows], outs)

        schedule(len(prompts), [len(p) for p in lead_ids], batch_size,
                 lambda idx: batch.admit(idx, [lead_ids[i] for i in idx],
                                         [guide_ids[i] for i in idx] if guide_ids else None),
                 batch.step, lambda: len(batch.rows), done)
        self.stats["lead_passes"] += batch.lead.forward_passes
        self.stats["guidance_passes"] += batch.guide.forward_passes if batch.guide is not None else 0
        return results


class _Batch:
    """The rows decoding together, their two views, and one decoding step."""

    def __init__(self, decoder: Decoder, max_new_tokens: int, stop_strings: tuple[str, ...]):
        self.d, self.max_new_tokens, self.stop_strings = decoder, max_new_tokens, stop_strings
        self.longest_stop = max((len(s) for s in stop_strings), default=0)
        self.lead = TokenView(decoder.lead, by_text=decoder.base_view == "text", use_cache=decoder.use_cache)
        self.guide = None
        if decoder.guidance is not None:
            self.guide = TokenView(decoder.guidance, by_text=not decoder.vocab.identical, use_cache=decoder.use_cache)
        self.rows: list[_Row] = []

    def admit(self, indices: list[int], lead_prompts: list[list[int]], guide_prompts: list[list[int]] | None) -> None:
        self.lead.admit(lead_prompts)
        if self.guide is not None:
            self.guide.admit(guide_prompts)
        tokenizer = self.d.lead.tokenizer
        self.rows += [_Row(i, Detokenizer(tokenizer, p[-1:])) for i, p in zip(indices, lead_prompts)]

    @torch.inference_mode()
    def step(self) -> list["_Row"]:
        """Decide one token for every row; return the rows that finished (they leave the batch)."""
        d, rows = self.d, self.rows
        self.d.stats["steps"] += 1
        probs = torch.softmax(self.lead.logits, dim=-1)
        top_prob, top_id = probs.max(-1)
        device = probs.device
        consulted = top_prob < d.policy.tau
        step = Step(base_probs=probs, base_top_prob=top_prob, base_top_id=top_id, consulted=consulted,
                    n_steps=torch.tensor([r.n_steps for r in rows], device=device),
                    n_applied=torch.tensor([r.n_applied for r in rows], device=device), vocab=d.vocab,
                    latched=torch.tensor([r.latched for r in rows], device=device))
        if bool(consulted.any()):
            guide_logits = self._guidance_logits()
            add_guidance_facts(step, torch.softmax(guide_logits, dim=-1))
            choice = d.policy.decide(step)
        else:  # no row is uncertain: every method keeps the base's own token
            choice = Greedy().decide(step)
        self._record(step, choice)
        finished = [r for r in rows if r.finished]
        if finished:
            keep = [i for i, r in enumerate(rows) if not r.finished]
            self.lead.select(keep)
            if self.guide is not None:
                self.guide.select(keep)
            self.rows = [rows[i] for i in keep]
        if self.rows:
            self._feed_lead()
        return finished

    def _guidance_logits(self) -> torch.Tensor:
        every = range(len(self.rows))
        if not self.guide.by_text:
            return self.guide.catch_up(every, ids=[r.ids for r in self.rows])
        return self.guide.catch_up(every, texts=[r.detok.text for r in self.rows],
                                   stables=[r.detok.stable_length for r in self.rows])

    def _feed_lead(self) -> None:
        every = range(len(self.rows))
        if self.lead.by_text:
            self.lead.catch_up(every, texts=[r.detok.text for r in self.rows],
                               stables=[r.detok.stable_length for r in self.rows])
        else:
            self.lead.catch_up(every, ids=[r.ids for r in self.rows])

    def _record(self, step: Step, choice) -> None:
        """Trace the step, apply the choice to each row and check stopping."""
        d = self.d
        size = step.base_size
        consulted = step.consulted
        has_g = step.guide_top_id is not None
        nan = torch.full_like(step.base_top_prob, math.nan)
        minus = torch.full_like(step.base_top_id, -1)
        no = torch.zeros_like(consulted)
        mapped_top = torch.where(step.guide_top_joint < size, step.guide_top_joint, minus) if has_g else minus
        columns = {
            "base_top_prob": step.base_top_prob, "base_top_id": step.base_top_id, "consulted": consulted,
            "applied": choice.applied, "alpha": choice.alpha, "blend_prob": choice.blend_prob, "source": choice.source,
            "joint": choice.token,
            "guide_top_id": torch.where(consulted, mapped_top, minus),
            "guide_top_prob": torch.where(consulted, step.guide_top_prob, nan) if has_g else nan,
            "base_prob_of_guide_top": torch.where(consulted, step.base_prob_of_guide_top, nan) if has_g else nan,
            "guide_top_rank": torch.where(consulted, step.located_rank, minus) if has_g else minus,
            "guide_top_in_base_top_p": (consulted & step.located_in_top_p) if has_g else no,
            "guide_top_spelled": (consulted & step.guide_top_spelled) if has_g else no,
            "base_top_p_size": torch.where(consulted, step.base_top_p_size, minus) if has_g else minus,
            "top100_overlap": torch.where(consulted, step.top100_overlap, nan) if has_g else nan,
        }
        if choice.latch is not None:
            columns["latch"] = choice.latch
        values = {k: v.tolist() for k, v in columns.items()}
        eos_ids = d.lead.eos_ids
        for j, row in enumerate(self.rows):
            joint = values["joint"][j]
            ids = [joint] if joint < size else d.vocab.base_ids_for_guidance_token(joint - size)
            entry = {k: values[k][j] for k in columns if k not in ("joint", "latch")}
            entry.update(step=row.n_steps, chosen_id=joint if joint < size else -1,
                         override=joint != values["base_top_id"][j])
            if values.get("latch", [False] * (j + 1))[j]:
                row.latched = True
            if len(ids) == 1 and ids[0] in eos_ids:
                entry["text_offset"] = len(row.detok.text)
                row.add(entry)
                row.finish("eos", self.stop_strings)
                continue
            checked = max(0, row.detok.stable_length - self.longest_stop + 1)
            row.ids.extend(ids)
            text = row.detok.push(ids)
            entry["text_offset"] = len(text)
            row.add(entry)
            if self.stop_strings and any(s in text[checked:] for s in self.stop_strings):
                row.finish("stop_string", self.stop_strings)
            elif row.n_steps >= self.max_new_tokens:
                row.finish("max_new_tokens", self.stop_strings)


def cut_at_stop(text: str, stop_strings) -> str:
    hits = [text.find(s) for s in stop_strings if s and s in text]
    return text[:min(hits)] if hits else text


class _Row:
    """Book-keeping of one row while it decodes."""

    def __init__(self, index: int, detok: Detokenizer):
        self.index, self.detok, self.ids = index, detok, []
        self.n_steps = self.n_applied = self.n_overrides = self.n_consulted = 0
        self.finished, self.stop_reason, self.latched = False, "", False
        self.trace = {c: [] for c in TRACE_COLUMNS}
        self.text = ""

    def add(self, entry: dict) -> None:
        for key, value in entry.items():
            self.trace[key].append(value)
        self.n_steps += 1
        self.n_applied += bool(entry["applied"])
        self.n_overrides += bool(entry["override"])
        self.n_consulted += bool(entry["consulted"])

    def finish(self, reason: str, stop_strings=()) -> None:
        self.finished, self.stop_reason = True, reason
        self.text = cut_at_stop(self.detok.text, stop_strings)

    def result(self) -> Generation:
        return Generation(self.text, list(self.ids), self.n_steps, self.n_applied, self.n_overrides,
                          self.stop_reason, self.trace, self.n_consulted)
