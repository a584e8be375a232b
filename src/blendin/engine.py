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
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .facts import add_guidance_facts, top_p_size
from .policies import SOURCE_BASE, SOURCE_GUIDANCE, Greedy, Step
from .prompts import Prompt
from .sampling import Sampling, sample, stream_key, uniforms
from .streams import check_compile
from .transfer import SYNCS, Clock, PendingCopy, on_device, to_device, to_host
from .views import Detokenizer, TokenView

TRACE_COLUMNS = (
    "step",
    "base_top_prob",
    "base_top_id",
    "consulted",
    "applied",
    "alpha",
    "blend_prob",
    "source",
    "chosen_id",
    "override",
    "guide_top_id",
    "guide_top_prob",
    "base_prob_of_guide_top",
    "guide_top_rank",
    "guide_top_in_base_top_p",
    "guide_top_spelled",
    "base_top_p_size",
    "top100_overlap",
    "text_offset",
    "sample_prob",
    "deferred_mass",
    "guide_eos_prob",
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

    @property
    def deferred_mass(self) -> float | None:
        """Mean share of the base's probability handed to the guidance per step (None where the method
        hands none over in that sense, e.g. proxy-tuning; see `policies.Choice.deferred`)."""
        values = self.trace.get("deferred_mass") or []
        return sum(values) / len(values) if values and all(v == v for v in values) else None

    @property
    def guide_eos_max(self) -> float | None:
        """The largest probability the guidance gave its end of sequence at a step where it was read."""
        values = [v for v in self.trace.get("guide_eos_prob") or [] if v == v]
        return max(values) if values else None


def check_generate_args(max_new_tokens, batch_size) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")


def schedule(
    n_prompts: int,
    lengths: Sequence[int],
    batch_size: int,
    admit: Callable[[list[int]], None],
    step: Callable[[], list],
    active: Callable[[], int],
    on_done: Callable[[list], None],
) -> None:
    """Continuous batching: admit prompts (shortest first) into free slots, step, report finished rows."""
    queue = deque(sorted(range(n_prompts), key=lambda i: lengths[i]))
    while queue or active():
        free = batch_size - active()
        if queue and free > 0:
            admit([queue.popleft() for _ in range(min(free, len(queue)))])
        finished = step()
        if finished:
            on_done(finished)


def new_stats() -> dict:
    """A decoder's running counts: forward passes, steps, steps in which the guidance ran a forward pass
    (one or more), copies to the host (`syncs`), and the widest attention mask given to either model
    against the longest row it read (tokens)."""
    return {
        "lead_passes": 0,
        "guidance_passes": 0,
        "steps": 0,
        "guidance_steps": 0,
        "syncs": 0,
        "widest_mask": 0,
        "longest_row": 0,
    }


def add_stats(stats: dict, lead, guide, syncs: int) -> None:
    """Add one `generate` call's counts from its two `TokenView`s (guide may be None)."""
    stats["syncs"] += syncs
    for view, key in ((lead, "lead_passes"), (guide, "guidance_passes")):
        if view is not None:
            stats[key] += view.forward_passes
            stats["widest_mask"] = max(stats["widest_mask"], getattr(view.stream, "widest", 0))
            stats["longest_row"] = max(stats["longest_row"], view.longest)


SCHEDULES = ("auto", "lazy", "every")


def resolve_schedule(schedule: str, device: torch.device) -> str:
    """lazy on a CPU (the guidance runs only on steps where some row is unsure, catching every row
    up), every on a GPU (the guidance reads each step's token at once, so its pass has the same shape
    every step, runs on its own CUDA stream beside the base's and needs no look at the device first)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"guidance_schedule={schedule!r} must be one of {', '.join(SCHEDULES)}")
    if schedule == "auto":
        return "every" if device.type == "cuda" else "lazy"
    return schedule


class TokenDecoder:
    """Decoding of `lead`, steered by `policy` with an optional guidance model, one step at a time
    (`speculation.SpeculativeDecoder` decodes the same in speculative rounds).

    lead: the model that owns the output (the base for guided methods).
    guidance, vocab: the guidance model and the VocabMap from it to the lead; None for solo methods.
    use_cache: False recomputes every step from scratch (slow; the reference for tests).
    base_view: "ids" (the lead reads its own token ids) or "text" (the lead re-reads the tokenized text
        every step, as the reference code's text-based servers did).
    guidance_schedule: "lazy", "every" or "auto" (see `resolve_schedule`); outputs are the same.
    compile: "none", "compile" or "cudagraphs": how decode steps run (`streams.decode_forward`).
    overlap: feed each step's tokens to the models straight from the device, before the host reads
        them, so that the next forward runs while the host does its work (EOS, stop strings, text,
        trace), and on CUDA run the guidance on its own stream beside the base; None = on CUDA. Same
        outputs (tests force it on the CPU); False switches both off.
    sampling: `sampling.Sampling` (the `decoding` settings); None or temperature 0 = greedy.
    untuned: a third model for proxy-tuning (the guidance before its tuning, same tokenizer), kept in
        step with the guidance's own reading of every row (`_Batch._untuned_probs`).
    """

    def __init__(
        self,
        lead,
        policy=None,
        guidance=None,
        vocab=None,
        use_cache: bool = True,
        base_view: str = "ids",
        guidance_schedule: str = "auto",
        compile: str = "none",
        overlap: bool | None = None,
        sampling: Sampling | None = None,
        untuned=None,
    ):
        self.lead, self.guidance, self.vocab = lead, guidance, vocab
        self.untuned = untuned  # proxy-tuning: the guidance's untuned twin, reading what the guidance reads
        self.policy = policy or Greedy()
        self.sampling = sampling or Sampling()
        self.use_cache = use_cache
        if base_view not in BASE_VIEWS:
            raise ConfigError(f"base_view={base_view!r} must be one of {', '.join(BASE_VIEWS)}")
        self.base_view = base_view
        if self.policy.tau > 0 and guidance is None:
            raise ConfigError(f"method {self.policy.name} needs a guidance model")
        self.schedule = resolve_schedule(guidance_schedule, lead.device)
        self.compile = check_compile(compile, lead.device)
        if overlap is None:
            overlap = lead.device.type == "cuda"
        # the guidance's own CUDA stream; not with CUDA graphs, whose replays of both models share one
        # memory pool and must not run at once, nor for a guidance on a device of its own (it runs beside
        # the base there anyway; its logits come to the lead's device, where the two distributions meet)
        self.guidance_device = guidance.device if guidance is not None else lead.device
        self.side_stream = overlap and lead.device.type == "cuda" and self.compile != "cudagraphs"
        self.side_stream = self.side_stream and self.guidance_device == lead.device
        self.overlap = overlap and use_cache and base_view == "ids"
        if vocab is not None:
            vocab.prepare()
        # the base's top-p size past its top 256 tokens (a flat distribution): on a GPU every row's is
        # computed in the step (a host read would stall the queued forward); on a CPU only the few rows
        # that need it, after the step's copy
        self.exact_top_p = lead.device.type == "cuda"
        self.stats = new_stats()
        self.clock = Clock(lead.device)
        self.lead_size = lead.vocab_size
        self.batch_class: type[_Batch] = _Batch
        # compile=cudagraphs: each model's KV cache outlives a decode, since the graphs recorded on its
        # buffers replay only at their addresses (a new cache per decode would record them all again)
        self.kept_caches: dict[str, object] = {}

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 256,
        stop_strings: Sequence[str] = (),
        batch_size: int = 8,
        on_batch: Callable[[list[int], list[Generation]], None] | None = None,
        keys: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Decode every prompt; outputs keep input order.

        on_batch(indices, generations) is called whenever rows finish (indices into `prompts`), so a
        caller can store finished samples as they come.
        keys: when sampling, each prompt's random stream (`sampling.stream_key` of its sample id and
        index); by default the stream of the prompt's position under the decoding seed.
        """
        check_generate_args(max_new_tokens, batch_size)
        if keys is None:
            keys = [stream_key(self.sampling.seed, str(i), 0) for i in range(len(prompts))]
        lead_ids = [self.lead.prompt_ids(p) for p in prompts]
        guide_ids = [self.guidance.prompt_ids(p) for p in prompts] if self.guidance is not None else None
        batch = self.batch_class(
            self, max_new_tokens, tuple(s for s in stop_strings if s), min(batch_size, len(prompts))
        )
        results: list[Generation | None] = [None] * len(prompts)
        syncs = SYNCS.count

        def done(rows):
            outs = [row.result(self.lead_size) for row in rows]
            for row, out in zip(rows, outs):
                results[row.index] = out
            if on_batch:
                on_batch([row.index for row in rows], outs)

        with on_device(self.lead.device):
            schedule(
                len(prompts),
                [len(p) for p in lead_ids],
                batch_size,
                lambda idx: batch.admit(
                    idx,
                    [lead_ids[i] for i in idx],
                    [guide_ids[i] for i in idx] if guide_ids else None,
                    [keys[i] for i in idx],
                ),
                batch.step,
                lambda: len(batch.rows),
                done,
            )
        add_stats(self.stats, batch.lead, batch.guide, SYNCS.count - syncs)
        if self.compile == "cudagraphs":
            for role, view in (("lead", batch.lead), ("guidance", batch.guide), ("untuned", batch.untuned)):
                if view is not None:
                    self.kept_caches[role] = view.stream.cache
        finished = [r for r in results if r is not None]
        assert len(finished) == len(prompts), "every prompt was decoded"
        return finished


# The columns of the one packed copy a step makes to the host (float64 holds every id and float32 exactly).
PACKED = (
    "sample_prob",
    "base_top_prob",
    "base_top_id",
    "consulted",
    "applied",
    "alpha",
    "blend_prob",
    "source",
    "joint",
    "guide_top_id",
    "guide_top_prob",
    "base_prob_of_guide_top",
    "guide_top_rank",
    "guide_top_in_base_top_p",
    "guide_top_spelled",
    "base_top_p_size",
    "top100_overlap",
    "latch",
    "deferred_mass",
    "guide_eos_prob",
)
_COLUMN = {name: i for i, name in enumerate(PACKED)}
_BOOLS = ("consulted", "applied", "guide_top_in_base_top_p", "guide_top_spelled")
_INTS = ("base_top_id", "source", "guide_top_id", "guide_top_rank", "base_top_p_size")


class _Batch:
    """The rows decoding together, their two views, and one decoding step.

    A step does its deciding on the device with the same tensor operations for every row, then
    copies one packed table [rows, PACKED] to the host (`transfer.to_host`); the host's work (the
    trace, EOS and stop strings, text for the views) reads that copy only. The lazy schedule reads
    one flag first (is any row unsure?) on the steps that might need the guidance.
    """

    def __init__(self, decoder: TokenDecoder, max_new_tokens: int, stop_strings: tuple[str, ...], rows: int = 1):
        """rows: how many rows will decode together at most (the caches are planned for them)."""
        self.d, self.max_new_tokens, self.stop_strings = decoder, max_new_tokens, stop_strings
        self.longest_stop = max((len(s) for s in stop_strings), default=0)
        # each stream plans its cache for the prompt + every new token (+ spelled and re-tokenized extras)
        headroom = max_new_tokens + 64

        def view(model, role: str, by_text: bool, room: int) -> TokenView:
            return TokenView(model, by_text=by_text, use_cache=decoder.use_cache, headroom=room,
                             clock=decoder.clock, role=role, compile=decoder.compile, rows=rows,
                             cache=decoder.kept_caches.get(role))  # fmt: skip

        self.lead = view(decoder.lead, "lead", decoder.base_view == "text", headroom)
        # the guidance (and proxy-tuning's third model, read on the steps the guidance is read) may
        # read the text in other tokens: twice the room
        self.guide = self.untuned = None
        if decoder.guidance is not None:
            self.guide = view(decoder.guidance, "guidance", not decoder.vocab.identical, 2 * headroom)
        if decoder.untuned is not None:
            self.untuned = view(decoder.untuned, "untuned", not decoder.vocab.identical, 2 * headroom)
        self.guide_eos = None  # the guidance's end ids, for `guide_eos_prob`
        if decoder.guidance is not None:
            self.guide_eos = to_device(sorted(decoder.guidance.eos_ids), torch.long, decoder.lead.device)
        self.side = torch.cuda.Stream(decoder.lead.device) if decoder.side_stream else None
        self.rows: list[_Row] = []
        self.counts: torch.Tensor | None = None  # [rows, 3] on the device: steps, applied, latched
        self.keys: torch.Tensor | None = None  # [rows] int64 on the device: each row's random stream

    def admit(
        self,
        indices: list[int],
        lead_prompts: list[list[int]],
        guide_prompts: list[list[int]] | None,
        keys: list[int],
    ) -> None:
        self.lead.admit(lead_prompts)
        if self.guide is not None:
            assert guide_prompts is not None, "a pair with a guidance model renders guidance prompts"
            self.guide.admit(guide_prompts)
        if self.untuned is not None:
            assert guide_prompts is not None, "the untuned twin reads the guidance's prompts"
            self.untuned.admit(guide_prompts)  # the same prompt ids as the guidance: one tokenizer
        tokenizer = self.d.lead.tokenizer
        self.rows += [_Row(i, Detokenizer(tokenizer, p[-1:])) for i, p in zip(indices, lead_prompts)]
        fresh = torch.zeros((len(indices), 3), dtype=torch.long, device=self.d.lead.device)
        self.counts = fresh if self.counts is None or not len(self.counts) else torch.cat([self.counts, fresh])
        new_keys = to_device(keys, torch.long, self.d.lead.device)
        self.keys = new_keys if self.keys is None or not len(self.keys) else torch.cat([self.keys, new_keys])

    @torch.inference_mode()
    def step(self) -> list["_Row"]:
        """Decide one token for every row; return the rows that finished (they leave the batch)."""
        d = self.d
        d.stats["steps"] += 1
        started = time.perf_counter()
        guidance_before = self.guide.forward_passes if self.guide is not None else 0
        counts, keys = self.counts, self.keys
        assert counts is not None and keys is not None, "rows were admitted before the first step"
        lead_logits = self.lead.logits
        probs = torch.softmax(lead_logits, dim=-1)
        top_prob, top_id = probs.max(-1)
        consulted = top_prob < d.policy.tau
        step = Step(
            base_probs=probs,
            base_top_prob=top_prob,
            base_top_id=top_id,
            consulted=consulted,
            n_steps=counts[:, 0],
            n_applied=counts[:, 1],
            vocab=d.vocab,
            latched=counts[:, 2].bool(),
        )
        guide_logits = None
        if self.guide is not None and d.policy.tau > 0:
            if d.schedule == "every":
                guide_logits = self.guide_logits
            elif to_host(consulted.any()):  # lazy: catch the guidance up only when some row needs it
                guide_logits = self._guidance_logits()
        policy = d.policy if guide_logits is not None else Greedy()  # no row uncertain: the base keeps every step
        if guide_logits is not None:
            add_guidance_facts(step, torch.softmax(guide_logits, dim=-1), exact=d.exact_top_p)
            step.untuned_probs = self._untuned_probs()
        choice = policy.decide(step)
        sample_prob = None
        if not d.sampling.greedy:  # draw from the distribution the rule chose (blendin.sampling)
            u = uniforms(keys, counts[:, 0])
            token, sample_prob, plain = sample(step, choice, policy, d.sampling, u)
            # blend_prob: the drawn token's share of the (untempered) blend, NaN where nothing was blended
            choice = replace(
                choice, token=token, blend_prob=torch.where(choice.blend_prob.isnan(), choice.blend_prob, plain)
            )
        packed = self._pack(step, choice, sample_prob)
        counts = self.counts = counts + torch.stack(
            [
                torch.ones_like(choice.applied, dtype=torch.long),
                choice.applied.long(),
                packed[:, _COLUMN["latch"]].long(),
            ],
            1,
        )
        counts[:, 2].clamp_(max=1)
        copy = PendingCopy(packed)
        if d.overlap:
            self._speculate(choice.token)
        values = copy.wait().copy()  # the pinned buffer goes back at once; the rows keep their own copy
        if d.overlap:
            self._commit(values)
        self._complete_top_p(values, probs)
        self._record(values)
        finished = [r for r in self.rows if r.finished]
        if finished:
            self._keep([i for i, r in enumerate(self.rows) if not r.finished])
        if self.rows:
            self._feed()
        d.clock.seconds["step"] = d.clock.seconds.get("step", 0.0) + time.perf_counter() - started
        if self.guide is not None and self.guide.forward_passes > guidance_before:
            d.stats["guidance_steps"] += 1
        return finished

    def _keep(self, keep: list[int]) -> None:
        """Keep only the rows at positions `keep`, in that order; the others leave the batch (their caches go)."""
        self.lead.select(keep)
        if self.guide is not None:
            self.guide.select(keep)
        if self.untuned is not None:
            self.untuned.select(keep)
        self.rows = [self.rows[i] for i in keep]
        assert self.counts is not None and self.keys is not None, "rows were admitted"
        kept = to_device(keep, torch.long, self.counts.device)
        self.counts, self.keys = self.counts[kept], self.keys[kept]

    def remove(self, rows: Sequence["_Row"]) -> None:
        """Take `rows` out of the batch between two steps, as if they had finished: a server frees the
        row of a client that left, or of a request that ended by its own budget or stop strings."""
        leaving = {id(row) for row in rows}
        if leaving & {id(row) for row in self.rows}:
            self._keep([i for i, row in enumerate(self.rows) if id(row) not in leaving])

    def _untuned_probs(self) -> torch.Tensor | None:
        """Proxy-tuning's third model, caught up with every row as the guidance reads it (on every step
        the guidance is read; it never runs ahead of the guidance)."""
        if self.untuned is None:
            return None
        return torch.softmax(self.untuned.follow(self.rows), dim=-1)

    def _pack(self, step: Step, choice, sample_prob: torch.Tensor | None) -> torch.Tensor:
        """Every per-row fact the host needs from this step, as one [rows, PACKED] float64 table."""
        consulted = step.consulted
        rows = consulted.shape[0]
        nan = torch.full((rows,), math.nan, dtype=torch.float64, device=consulted.device)
        minus = torch.full_like(nan, -1.0)
        columns = {
            "base_top_prob": step.base_top_prob,
            "base_top_id": step.base_top_id,
            "consulted": consulted,
            "applied": choice.applied,
            "alpha": choice.alpha,
            "blend_prob": choice.blend_prob,
            "source": choice.source,
            "joint": choice.token,
            "latch": choice.latch if choice.latch is not None else torch.zeros_like(consulted),
            "deferred_mass": choice.deferred if choice.deferred is not None else default_deferred(choice),
        }
        if sample_prob is not None:
            columns["sample_prob"] = sample_prob
        if step.guide_top_id is not None:
            size = step.base_size
            assert step.guide_top_joint is not None, "set with guide_top_id (facts.add_guidance_facts)"
            mapped_top = torch.where(step.guide_top_joint < size, step.guide_top_joint, -1)
            columns.update(
                {
                    "guide_top_id": torch.where(consulted, mapped_top, -1),
                    "guide_top_prob": torch.where(consulted, step.guide_top_prob, math.nan),
                    "base_prob_of_guide_top": torch.where(consulted, step.base_prob_of_guide_top, math.nan),
                    "guide_top_rank": step.located_rank,
                    "guide_top_in_base_top_p": step.located_in_top_p,
                    "guide_top_spelled": step.guide_top_spelled,
                    "base_top_p_size": step.base_top_p_size,
                    "top100_overlap": step.top100_overlap,
                }
            )
        if step.guide_probs is not None and self.guide_eos is not None:  # where the guidance would have stopped
            eos = step.guide_probs.index_select(-1, self.guide_eos).sum(-1)
            columns["guide_eos_prob"] = torch.where(consulted, eos, math.nan)
        no = torch.zeros_like(nan)  # a step without the guidance: no guidance facts
        blank = {
            "guide_top_id": minus,
            "guide_top_rank": minus,
            "base_top_p_size": minus,
            "guide_top_in_base_top_p": no,
            "guide_top_spelled": no,
        }
        return torch.stack(
            [columns[name].to(torch.float64) if name in columns else blank.get(name, nan) for name in PACKED], dim=1
        )

    def _complete_top_p(self, values, probs: torch.Tensor) -> None:
        """Top-p sizes past the first 256 tokens (`TokenDecoder.exact_top_p` off): rare with real models
        (a very flat distribution), done exactly here for the rows that need it."""
        column = values[:, _COLUMN["base_top_p_size"]]
        rows = [i for i in range(len(column)) if column[i] < -1]
        if rows:
            sizes = to_host(top_p_size(probs[to_device(rows, torch.long, probs.device)]))
            column[rows] = sizes

    def _speculate(self, token: torch.Tensor) -> None:
        """Queue the next forward(s) on the chosen tokens while they are still on the device: each row
        reads the token it chose (a guidance-only token: the first base token of its spelling). The
        next `_feed` finds them read and feeds only what differs (the rest of a spelling)."""
        ids = token
        size = self.d.lead_size
        if self.d.vocab is not None:
            spelled = self.d.vocab.first_base_ids((token - size).clamp_min(0))
            ids = torch.where(token < size, token, torch.where(spelled >= 0, spelled, self.d.lead.pad_id))
        guide_too = (
            self._every_step() and not self.guidance_view.by_text
        )  # one tokenizer: the guidance reads the same ids
        guide_ids = _moved(ids, self.d.guidance_device)
        self._beside(
            (lambda: self.guidance_view.speculate(guide_ids)) if guide_too else None, lambda: self.lead.speculate(ids)
        )
        self.speculated_guide = guide_too

    def _commit(self, values) -> None:
        """What `_speculate` fed, as read on the host (the same rule)."""
        size, pad = self.d.lead_size, self.d.lead.pad_id
        ids = []
        for joint in values[:, _COLUMN["joint"]].astype(int).tolist():
            first = joint if joint < size else self.d.vocab.first_base_id(joint - size)
            ids.append(first if first >= 0 else pad)
        self.lead.commit([[i] for i in ids])
        if self.speculated_guide:
            self.guidance_view.commit([[i] for i in ids])

    @property
    def guidance_view(self) -> TokenView:
        """The guidance's view, for the code paths that run only when the pair has a guidance model."""
        assert self.guide is not None, "a solo method has no guidance view"
        return self.guide

    def _every_step(self) -> bool:
        return self.guide is not None and self.d.schedule == "every" and self.d.policy.tau > 0

    @property
    def guide_logits(self) -> torch.Tensor:
        """The every-step schedule: the guidance already read this step's tokens in `_feed` (on the
        lead's device, where the two distributions meet)."""
        return _moved(self.guidance_view.logits, self.d.lead.device)

    def _guidance_logits(self) -> torch.Tensor:
        return _moved(self.guidance_view.follow(self.rows), self.d.lead.device)

    def _feed(self) -> None:
        """Bring the lead (and, on the every-step schedule, the guidance) up to date with every row."""
        every_step = self._every_step()
        self._beside(
            (lambda: self.guidance_view.follow(self.rows)) if every_step else None, lambda: self.lead.follow(self.rows)
        )

    def _beside(self, guidance_work, lead_work) -> None:
        """Run the guidance's work (None: none this step) beside the lead's: on CUDA on its own stream,
        joined before the next step reads it; elsewhere one after the other."""
        if guidance_work is None or self.side is None:
            if guidance_work is not None:
                guidance_work()
            lead_work()
            return
        main = torch.cuda.current_stream(self.side.device)
        held = self.guidance_view.tensors()  # made on the main stream: not freed (and reused) while the side reads them
        self.side.wait_stream(main)
        with torch.cuda.stream(self.side):
            guidance_work()
        lead_work()
        main.wait_stream(self.side)
        for tensor in self.guidance_view.tensors():  # made on the side stream, read on the main one from now on
            tensor.record_stream(main)
        del held

    def _record(self, values) -> None:
        """Trace the step, apply each row's choice and check stopping (host work on the copy)."""
        for row, facts in zip(self.rows, values):
            self._record_token(row, facts)

    def _record_token(self, row: "_Row", facts) -> None:
        """Add one chosen token (its packed facts) to a row's output and trace; finish the row if it
        stops there (EOS, a stop string, max_new_tokens)."""
        d = self.d
        size = d.lead_size
        joint = int(facts[_COLUMN["joint"]])
        ids = [joint] if joint < size else d.vocab.base_ids_for_guidance_token(joint - size)
        if len(ids) == 1 and ids[0] in d.lead.eos_ids:
            row.add(facts, joint, len(row.detok.text))
            row.finish("eos", self.stop_strings)
            return
        checked = max(0, row.detok.stable_length - self.longest_stop + 1)
        row.ids.extend(ids)
        text = row.detok.push(ids)
        row.add(facts, joint, len(text))
        if self.stop_strings and any(s in text[checked:] for s in self.stop_strings):
            row.finish("stop_string", self.stop_strings)
        elif row.n_steps >= self.max_new_tokens:
            row.finish("max_new_tokens", self.stop_strings)


def default_deferred(choice) -> torch.Tensor:
    """The share of the base's probability a choice handed to the guidance, for policies that do not say:
    all of it where the guidance took the step, alpha where BlendIn blended, none where the base kept it."""
    alpha = choice.alpha.to(torch.float32)
    handed = torch.where(choice.source == SOURCE_GUIDANCE, 1.0, 0.0)
    return torch.where((choice.source != SOURCE_BASE) & (choice.source != SOURCE_GUIDANCE), alpha, handed)


def _moved(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device` (itself if already there): queued on the GPU, waited for when it lands on
    the host (a host read must not see the copy unfinished)."""
    return tensor.to(device, non_blocking=device.type == "cuda")


def cut_at_stop(text: str, stop_strings) -> str:
    hits = [text.find(s) for s in stop_strings if s and s in text]
    return text[: min(hits)] if hits else text


class _Row:
    """Book-keeping of one row while it decodes: its tokens, text and one packed trace row per step."""

    def __init__(self, index: int, detok: Detokenizer):
        self.index, self.detok = index, detok
        self.ids: list[int] = []
        self.n_steps = 0
        self.finished, self.stop_reason = False, ""
        self.facts: list = []  # per step: the packed row (numpy), the chosen joint id, the text length
        self.text = ""
        self.n_applied, self.latched = 0, False  # what the device's counts say, known on the host
        self.drafts = [0, 0]  # speculative decoding: drafts proposed, drafts accepted

    def add(self, facts, joint: int, text_offset: int) -> None:
        self.facts.append((facts, joint, text_offset))
        self.n_steps += 1
        self.n_applied += bool(facts[_COLUMN["applied"]])
        self.latched |= bool(facts[_COLUMN["latch"]])

    def finish(self, reason: str, stop_strings=()) -> None:
        self.finished, self.stop_reason = True, reason
        self.text = cut_at_stop(self.detok.text, stop_strings)

    def result(self, base_size: int) -> Generation:
        table = np.stack([f for f, _, _ in self.facts])
        joints = [j for _, j, _ in self.facts]
        trace: dict[str, list] = {"step": list(range(len(joints)))}
        for name in TRACE_COLUMNS:
            if name in _COLUMN:
                column = table[:, _COLUMN[name]]
                trace[name] = (
                    column.astype(bool) if name in _BOOLS else column.astype(np.int64) if name in _INTS else column
                ).tolist()
        trace["chosen_id"] = [j if j < base_size else -1 for j in joints]
        # the output differs from the base's own top token because the rule handed the step on (a token
        # sampled from the base's distribution is the base's choice, whatever it is)
        trace["override"] = [
            j != b and s != SOURCE_BASE for j, b, s in zip(joints, trace["base_top_id"], trace["source"])
        ]
        trace["text_offset"] = [t for _, _, t in self.facts]
        trace = {name: trace[name] for name in TRACE_COLUMNS}
        n_applied = sum(trace["applied"])
        extras = {"drafts_proposed": self.drafts[0], "drafts_accepted": self.drafts[1]} if self.drafts[0] else {}
        return Generation(
            self.text,
            list(self.ids),
            self.n_steps,
            n_applied,
            sum(trace["override"]),
            self.stop_reason,
            trace,
            sum(trace["consulted"]),
            extras,
        )
