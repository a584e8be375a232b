"""The decoding side of `blendin.serve`: one thread owns the models and steps the running batches;
requests join a batch as they arrive and leave it as they end (continuous batching on the engine's
own `_Batch`, not a second decoding loop).

Requests reach the engine as `Request`s (already checked field by field by `blendin.openai_api`); the
engine renders their prompts for each model, queues one row per output, and answers through the
request's `emit` callback with events:

- ("accepted", {}): the prompts fit; decoding will follow (a streaming response may start now);
- ("text", index, piece): streaming only, new text of output `index`, never text a stop string may
  still take back;
- ("answer", `Answer`): one output is finished (with its log-probabilities, if asked for);
- ("done", usage): every output is finished; usage counts both models' tokens;
- ("error", `ServeError`): the request failed (a prompt too long, a decoding error); no more events.

What shares a batch: rows with the same `Settings` (temperature, top_p, top_k and the method's
parameters after a request's overrides). Each row has its own random stream (`sampling.stream_key` of
the request's seed and the output's index), so different seeds share a batch. Batches of different
settings are stepped in turn; `batch_size` bounds the rows of all of them together.

Each row stops by its own `max_tokens` and stop strings, checked after every step exactly as the
engine checks its own (`engine._Batch._record`), so a served output is the output `TokenDecoder.generate`
gives for the same prompt. A batch whose step raises is taken apart: its rows are decoded again, each
alone (the decoding does not depend on the batch), so the row that raises again fails its request
alone and the others finish.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from .engine import Generation, _Batch, _Row
from .errors import BlendinError, ConfigError
from .likelihood import FLOOR, Item, TokenScores, plain_guide_context, token_scores
from .memory import is_out_of_memory, release_after_out_of_memory
from .methods import method as method_spec
from .pair import Pair
from .policies import SOURCE_NAMES
from .prompts import Prompt, encode_as_is, prefix_id
from .sampling import Sampling, stream_key
from .transfer import on_device

log = logging.getLogger(__name__)


class ServeError(Exception):
    """A request the server answers with an error: HTTP status, a message that says what to change,
    and the request field it is about (OpenAI's `param`)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class QueueFull(Exception):
    """The queue of rows waiting for a place in a batch is full (HTTP 503 with Retry-After)."""


@dataclass(frozen=True)
class Settings:
    """What rows must have in common to decode in one batch. temperature 0 is greedy (top_p and
    top_k then do nothing and are 1.0 and 0). method: the request's overrides of the method's
    parameters, as sorted (key, value) pairs."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    method: tuple = ()

    @property
    def sampling(self) -> Sampling:
        if self.temperature == 0:
            return Sampling()
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


@dataclass
class Request:
    """One checked request. prompts: text or token ids (completions: the base continues them as they
    are) or a `Prompt` (chat: each model's own rendering, as in `blendin.generate`). logprobs: how
    many of the most probable tokens to list at each position (None: no log-probabilities). echo:
    the prompt's tokens are part of the answer (and scored). max_tokens 0: score only (with echo)."""

    prompts: list
    max_tokens: int
    settings: Settings = field(default_factory=Settings)
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0
    logprobs: int | None = None
    echo: bool = False
    stream: bool = False
    prompt_field: str = "prompt"  # the field the prompts came in (prompt or messages), for errors


@dataclass
class Answer:
    """One finished output, as plain data for the response: its text (after the prompt's, with echo),
    why it ended (stop | length: also where max_tokens 0 generated nothing), the per-step facts of who chose each
    token (`step_facts`), their summary, and the log-probabilities when asked for (OpenAI's
    completions layout: tokens, token_logprobs, top_logprobs, text_offset)."""

    index: int
    text: str
    finish_reason: str
    tokens: list[dict]
    summary: dict
    logprobs: dict | None = None


class Job:
    """A request inside the engine: where its events go, its outputs, and whether its client left."""

    def __init__(self, request: Request, emit: Callable[[tuple], object]):
        self.request, self.emit = request, emit
        self.cancelled = False  # set by the HTTP side when the client disconnects
        self.failed = self.finished = False
        self.rows_needed = len(request.prompts) * (request.n if request.max_tokens else 1)
        self.lead_ids: list[list[int]] = []
        self.guide_ids: list[list[int] | None] = []
        self.texts: list[str] = []  # each prompt as text (what echo returns)
        self.outputs: dict[int, tuple[int, Generation | None]] = {}  # answer index -> (prompt, generation)
        self.remaining = 0


class _Live:
    """One output while it decodes: its place in the job, its prompts and random stream, its engine
    row (None while waiting), and what a stream has sent of it."""

    def __init__(self, job: Job, uid: int, prompt: int, index: int, key: int, settings: Settings):
        self.job, self.uid, self.prompt, self.index, self.key = job, uid, prompt, index, key
        self.batch_key: tuple = (settings, None)
        self.row: _Row | None = None
        self.queued = True  # counted in the queue until admitted
        self.solo = False  # decoded alone after its batch failed
        self.checked_from = 0  # the stable text length before the last step (where stop strings are searched)
        self.sent = ""  # streamed text
        stops = job.request.stop
        self.hold = max((len(s) for s in stops), default=1) - 1  # characters a stop string may still take back


def context_length(loaded, limit: int | None) -> int:
    """Tokens a model's context holds (its config's `max_position_embeddings`), at most `limit`."""
    config = loaded.model.config.get_text_config()
    own = getattr(config, "max_position_embeddings", None) or 2048
    return min(own, limit) if limit else own


class ServeEngine:
    """The decoding thread of a server, over a loaded `Pair` and one token-level method.

    method: the method config (name and parameters). batch_size: rows decoding at once, all batches
    together. max_queue: rows that may wait for a place (a request that would exceed it raises
    `QueueFull`). max_tokens_limit: the most new tokens a row may ask for (each batch plans its KV cache
    for it). max_context: a lower context length than the models' own (None: theirs). floor: the
    log-probability of a token the method gives 0. The engine settings are `TokenDecoder`'s.
    """

    def __init__(
        self,
        pair: Pair,
        method: dict,
        batch_size: int = 8,
        max_queue: int = 64,
        max_tokens_limit: int = 256,
        max_context: int | None = None,
        floor: float = FLOOR,
        base_view: str = "ids",
        guidance_schedule: str = "auto",
        compile: str = "none",
    ):
        self.pair, self.method = pair, dict(method)
        self.spec = method_spec(self.method["name"])
        check_servable(self.spec)
        self.batch_size, self.max_queue, self.max_tokens_limit = batch_size, max_queue, max_tokens_limit
        self.floor = floor
        self.base_view, self.guidance_schedule, self.compile = base_view, guidance_schedule, compile
        self.lead = pair.model(self.spec.roles[0])
        self.guidance = None if self.spec.solo else pair.model(self.spec.roles[1])
        self.untuned = pair.model(self.spec.roles[2]) if len(self.spec.roles) > 2 else None  # proxy-tuning
        self.vocab = None if self.spec.solo else pair.vocab
        self.lead_context = context_length(self.lead, max_context)
        self.guide_context = context_length(self.guidance, max_context) if self.guidance is not None else None
        self.device = self.lead.device
        self._cv = threading.Condition()
        self._inbox: list[Job] = []
        self._cancels: list[Job] = []
        self._queued = 0  # rows submitted and not yet admitted to a batch
        self._closing = False
        self._thread: threading.Thread | None = None
        # the engine thread's own state
        self._waiting: deque[_Live] = deque()
        self._batches: dict[tuple, _Batch] = {}
        self._members: dict[tuple, list[_Live]] = {}
        self._by_row: dict[int, _Live] = {}
        self._scoring: list[Job] = []
        self._decoders: dict[Settings, object] = {}
        self._uid = 0
        # requests taken = finished + cancelled (the client left) + refused (a 4xx after intake, e.g. a prompt
        # too long) + failed (a 5xx); rejected: 503s of a full queue, never taken
        self.counts = {
            "requests": 0,
            "finished": 0,
            "cancelled": 0,
            "refused": 0,
            "failed": 0,
            "rejected": 0,
            "steps": 0,
        }

    def decoder(self, settings: Settings):
        """The decoder for these settings (its policy checks the method's overrides: ConfigError)."""
        if settings not in self._decoders and len(self._decoders) >= 64:  # forget settings no batch uses now
            used = {key[0] for key in self._batches}
            self._decoders = {s: d for s, d in self._decoders.items() if s in used}
        if settings not in self._decoders:
            self._decoders[settings] = self.pair.decoder(
                {**self.method, **dict(settings.method)},
                base_view=self.base_view,
                guidance_schedule=self.guidance_schedule,
                compile=self.compile,
                sampling=settings.sampling,
            )
        return self._decoders[settings]

    # ---- the HTTP side's calls (any thread) -------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a request, or raise QueueFull when its rows would not fit in the queue."""
        with self._cv:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if self._queued + job.rows_needed > self.max_queue and self._queued > 0:
                self.counts["rejected"] += 1
                raise QueueFull(f"{self._queued} rows are waiting (max_queue={self.max_queue})")
            self._queued += job.rows_needed
            self.counts["requests"] += 1
            self._inbox.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """The client left: free the job's rows at the next step."""
        job.cancelled = True
        with self._cv:
            self._cancels.append(job)
            self._cv.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="blendin-serve-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def status(self) -> dict:
        """What the engine holds now (read without stopping it: a snapshot)."""
        return {
            "active_rows": sum(len(b.rows) for b in list(self._batches.values())),
            "waiting_rows": self._queued + sum(1 for live in list(self._waiting) if not live.queued),
            "batches": len(self._batches),
            "scoring": len(self._scoring),
            **self.counts,
            **memory(self.device),
        }

    # ---- the engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        busy = False
        while True:
            with self._cv:
                if busy and not (self._inbox or self._cancels or self._has_work()):
                    release_freed_memory()  # idle now: give the allocator's freed blocks back
                while not (self._inbox or self._cancels or self._closing or self._has_work()):
                    self._cv.wait()
                busy = True
                if self._closing:
                    break
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            try:
                with on_device(self.device):
                    for job in cancels:
                        self._drop(job, "cancelled")
                    for job in inbox:
                        self._intake(job)
                    self._admit()
                    for key in list(self._batches):
                        self._step(key)
                    self._score()
            except Exception as err:  # a fault of the engine's own (no batch or request to blame): fail all, go on
                log.exception("serve engine: unexpected error; failing every request in flight")
                self._fail_all(ServeError(500, f"internal error: {type(err).__name__}: {err}"))
        self._fail_all(ServeError(503, "the server is shutting down"))

    def _has_work(self) -> bool:
        return bool(self._waiting or self._batches or self._scoring)

    def _release(self, rows: int) -> None:
        with self._cv:
            self._queued -= rows

    def _intake(self, job: Job) -> None:
        """Render the prompts for each model and check their lengths; queue one row per output."""
        request = job.request
        if job.cancelled:  # its client left before it got here (counted when the cancel was taken)
            self._release(job.rows_needed)
            return
        try:
            for prompt in request.prompts:
                lead_ids, guide_ids, text = self._render(prompt, request.prompt_field)
                self._check_length(lead_ids, guide_ids, request)
                job.lead_ids.append(lead_ids)
                job.guide_ids.append(guide_ids)
                job.texts.append(text)
        except ServeError as err:
            self._release(job.rows_needed)
            self._fail(job, err)
            return
        job.emit(("accepted", {}))
        if request.max_tokens == 0:  # scoring only (echo)
            self._release(job.rows_needed)
            job.outputs = {p: (p, None) for p in range(len(request.prompts))}
            self._scoring.append(job)
            return
        for p in range(len(request.prompts)):
            for k in range(request.n):
                self._uid += 1
                key = stream_key(request.seed, "", k)
                self._waiting.append(_Live(job, self._uid, p, p * request.n + k, key, request.settings))
        job.remaining = len(request.prompts) * request.n

    def _render(self, prompt, field: str) -> tuple[list[int], list[int] | None, str]:
        """(the lead's ids, the guidance's ids, the prompt as text) for a prompt of a request."""
        lead, guide = self.lead, self.guidance
        try:
            if isinstance(prompt, Prompt):  # chat: each model's own rendering, as the engine's other commands
                return (
                    lead.prompt_ids(prompt),
                    guide.prompt_ids(prompt) if guide else None,
                    prompt.user,
                )
            if isinstance(prompt, str):
                text = prompt
                as_is = lead.spec.prompt_format == "plain"
                lead_ids = encode_as_is(lead.tokenizer, text) if as_is else lead.prompt_ids(Prompt(text))
            else:
                size = len(lead.tokenizer)
                bad = [t for t in prompt if not 0 <= t < size]
                if bad:
                    raise ServeError(
                        400, f"token id {bad[0]} is not in the base model's vocabulary (0..{size - 1})", field
                    )
                lead_ids = list(prompt)
                text = lead.tokenizer.decode(lead_ids, skip_special_tokens=True)
            guide_ids = None
            if guide is not None:
                guide_ids = guide.prompt_ids(Prompt(text)) if text.strip() else [prefix_id(guide.tokenizer)]
            return lead_ids, guide_ids, text
        except BlendinError as err:  # an empty prompt, a model without a chat template
            raise ServeError(400, str(err), field) from None

    def _check_length(self, lead_ids: list[int], guide_ids: list[int] | None, request: Request) -> None:
        for ids, limit, who in ((lead_ids, self.lead_context, "base"), (guide_ids, self.guide_context, "guidance")):
            if ids is None or limit is None:
                continue
            if len(ids) > limit:
                raise ServeError(
                    400,
                    f"the prompt is {len(ids)} tokens long for the {who} model, whose context holds {limit}. "
                    "Fix: a shorter prompt",
                    request.prompt_field,
                )
            if len(ids) + request.max_tokens > limit:
                raise ServeError(
                    400,
                    f"the prompt ({len(ids)} tokens for the {who} model) and max_tokens={request.max_tokens} "
                    f"exceed its context of {limit} tokens. Fix: max_tokens <= {limit - len(ids)}",
                    "max_tokens",
                )

    def _admit(self) -> None:
        """Waiting rows into free places (first come, first served), one prefill per batch they join."""
        free = self.batch_size - sum(len(b.rows) for b in self._batches.values())
        taking: list[_Live] = []
        while self._waiting and len(taking) < free:
            live = self._waiting.popleft()
            if live.queued:
                live.queued = False
                self._release(1)
            if not (live.job.cancelled or live.job.failed):
                taking.append(live)
        groups: dict[tuple, list[_Live]] = {}
        for live in taking:
            groups.setdefault(live.batch_key, []).append(live)
        for key, lives in groups.items():
            if key not in self._batches:
                try:
                    decoder = self.decoder(key[0])
                except Exception as err:  # settings the request checks let through but no decoder takes
                    for live in lives:
                        self._fail(live.job, ServeError(400, f"these settings cannot decode: {err}", "blendin"))
                    continue
                # caches planned once for every row the server may decode (no regrowing as clients come);
                # a row decoded alone after its batch failed (key[1] names it) plans for itself only
                rows = 1 if key[1] is not None else self.batch_size
                self._batches[key] = _Batch(decoder, self.max_tokens_limit, (), rows)
                self._members[key] = []
            batch = self._batches[key]
            self._members[key] += lives
            try:
                batch.admit(
                    [live.uid for live in lives],
                    [live.job.lead_ids[live.prompt] for live in lives],
                    [live.job.guide_ids[live.prompt] or [] for live in lives] if self.guidance is not None else None,
                    [live.key for live in lives],
                )
            except Exception as err:
                self._take_apart(key, err)
                continue
            for live, row in zip(lives, batch.rows[-len(lives) :]):
                live.row = row
                self._by_row[id(row)] = live

    def _step(self, key: tuple) -> None:
        """One step of one batch; settle every row's own stopping rules; stream; end the finished."""
        batch = self._batches.get(key)
        if batch is None:  # taken apart earlier in this round
            return
        try:
            finished = batch.step()
            rows = list(finished) + list(batch.rows)
            ended = [live for live in (self._by_row[id(row)] for row in rows) if self._settle(live)]
            batch.remove([live.row for live in ended if live.row is not None])
        except Exception as err:
            self._take_apart(key, err)
            return
        self.counts["steps"] += 1
        for live in self._members[key]:
            if live.job.request.stream and live.row is not None and not live.row.finished:
                self._stream(live)
        gone = {id(live) for live in ended}
        self._members[key] = [live for live in self._members[key] if id(live) not in gone]
        for live in ended:
            self._end(live)
        if not batch.rows:  # an empty batch is dropped with its caches
            del self._batches[key], self._members[key]

    def _settle(self, live: _Live) -> bool:
        """Apply the row's own stop strings and max_tokens after a step, in `_Batch._record`'s order;
        True when the row is finished."""
        row, request = live.row, live.job.request
        assert row is not None, "a row in a batch"
        if request.stop and row.stop_reason != "eos":
            checked = max(0, live.checked_from - max(len(s) for s in request.stop) + 1)
            if any(s in row.detok.text[checked:] for s in request.stop):
                row.finish("stop_string", request.stop)
        live.checked_from = row.detok.stable_length
        if not row.finished and row.n_steps >= request.max_tokens:
            row.finish("max_new_tokens", request.stop)
        return row.finished

    def _stream(self, live: _Live) -> None:
        """Send the text no later token or stop string can change."""
        row = live.row
        assert row is not None, "a decoding row"
        end = row.detok.stable_length - live.hold
        if end > len(live.sent) and row.detok.text.startswith(live.sent):
            piece = row.detok.text[len(live.sent) : end]
            live.sent += piece
            live.job.emit(("text", live.index, piece))

    def _end(self, live: _Live) -> None:
        row, job = live.row, live.job
        assert row is not None, "a row that finished"
        self._by_row.pop(id(row), None)
        live.row = None
        gen = row.result(self.lead.vocab_size)
        if job.failed or job.cancelled:
            return
        if job.request.stream:
            if not gen.text.startswith(live.sent):  # decoded again alone, it wrote another text (reduced precision)
                self._fail(job, ServeError(500, "the output changed when its batch was decoded again; retry"))
                return
            if len(gen.text) > len(live.sent):
                job.emit(("text", live.index, gen.text[len(live.sent) :]))
        job.outputs[live.index] = (live.prompt, gen)
        job.remaining -= 1
        if job.request.logprobs is None:
            job.emit(("answer", self._answer(job, live.index, live.prompt, gen, None)))
            if job.remaining == 0:
                self._done(job)
        elif job.remaining == 0:
            self._scoring.append(job)

    def _take_apart(self, key: tuple, err: Exception) -> None:
        """A batch's admit or step raised: decode its rows again, each alone; a row that fails alone
        fails its request."""
        log.warning(
            "serve engine: a batch failed (%s: %s); decoding its rows again one by one", type(err).__name__, err
        )
        self._batches.pop(key, None)
        if is_out_of_memory(err):  # a CUDA-graph capture cut off by it leaves the graphs' manager unusable
            release_after_out_of_memory()
        for live in reversed(self._members.pop(key, [])):
            if live.row is not None:
                self._by_row.pop(id(live.row), None)
                live.row = None
            if live.job.failed or live.job.cancelled:
                continue
            if live.solo:
                self._fail(live.job, ServeError(500, f"decoding failed: {type(err).__name__}: {err}"))
            else:
                live.solo, live.batch_key, live.checked_from = True, (key[0], live.uid), 0
                self._waiting.appendleft(live)

    def _score(self) -> None:
        """Log-probabilities of finished jobs that asked for them, by teacher forcing
        (`likelihood.token_scores`): jobs with the same settings and top count in one call."""
        if not self._scoring:
            return
        jobs, self._scoring = self._scoring, []
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            if not (job.failed or job.cancelled):
                groups.setdefault((job.request.settings, job.request.logprobs), []).append(job)
        for (settings, top), members in groups.items():
            try:
                self._score_jobs(members, settings, top)
            except Exception:  # find the request that fails: score each alone
                for job in members:
                    try:
                        self._score_jobs([job], settings, top)
                    except Exception as err:
                        log.exception("serve engine: scoring failed")
                        self._fail(job, ServeError(500, f"scoring failed: {type(err).__name__}: {err}"))

    def _score_jobs(self, jobs: list[Job], settings: Settings, top: int) -> None:
        items, owners = [], []
        for job in jobs:
            for index, (p, gen) in sorted(job.outputs.items()):
                items.append(self._item(job, p, gen))
                owners.append((job, index))
        policy = self.decoder(settings).policy
        scores = token_scores(
            items, policy, self.lead, self.guidance, self.vocab, 8, self.floor, top, untuned=self.untuned
        )
        for (job, index), scored in zip(owners, scores):
            p, gen = job.outputs[index]
            job.emit(("answer", self._answer(job, index, p, gen, scored)))
        for job in jobs:
            self._done(job)

    def _item(self, job: Job, p: int, gen: Generation | None) -> Item:
        """What is scored: with echo, the prompt and output as one text with no question (the guidance reads
        it as plain text, as lm-eval's rolling log-likelihoods do); without, the output as it was decoded."""
        output = tuple(gen.token_ids) if gen is not None else ()
        lead_ids = job.lead_ids[p]
        if job.request.echo:
            ids = (*lead_ids, *output)
            guide = None
            if self.guidance is not None and self.vocab is not None:
                guide = plain_guide_context(self.lead.tokenizer, self.guidance.tokenizer, self.vocab.identical, ids[:1])
            return Item(ids[:1], ids[1:], guide)
        guide_ids = job.guide_ids[p]
        return Item(tuple(lead_ids), output, tuple(guide_ids) if guide_ids is not None else None)

    def _answer(self, job: Job, index: int, p: int, gen: Generation | None, scored: TokenScores | None) -> Answer:
        request = job.request
        text = gen.text if gen is not None else ""
        prompt_ids = job.lead_ids[p] if request.echo else []
        logprobs = None
        if scored is not None:
            ids = [*prompt_ids, *(gen.token_ids if gen is not None else [])]
            values: list = scored.logprobs
            tops: list = [[(t, v) for t, v in top] for top in scored.top] if request.logprobs else [[] for _ in values]
            if request.echo:  # the prompt's first token has no log-probability
                values, tops = [None, *values], [None, *tops]
            tokens = [self._token_text(t) for t in ids]
            decode = self.lead.tokenizer.decode
            output = gen.token_ids if gen is not None else []
            # where each token starts in the answer's text (special tokens of the prompt take no room)
            offsets = [len(decode(prompt_ids[:i], skip_special_tokens=True)) for i in range(len(prompt_ids))]
            start = len(job.texts[p]) if request.echo else 0
            offsets += [start + len(decode(output[:j])) for j in range(len(output))]
            logprobs = {
                "tokens": tokens,
                "token_logprobs": values,
                "top_logprobs": [None if top is None else self._top_dict(top) for top in tops],
                "text_offset": offsets,
            }
        return Answer(
            index,
            (job.texts[p] if request.echo else "") + text,
            "length" if gen is None or gen.stop_reason == "max_new_tokens" else "stop",
            step_facts(gen),
            self._summary(gen, request),
            logprobs,
        )

    def _token_text(self, joint: int) -> str:
        """A token's text: a base token, or (joint id base_size + g) a guidance token without a twin."""
        if joint < self.lead.vocab_size or self.guidance is None:
            return self.lead.tokenizer.decode([joint])
        return self.guidance.tokenizer.decode([joint - self.lead.vocab_size])

    def _top_dict(self, top: list[tuple[int, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for joint, value in top:  # most probable first: a text two tokens share keeps the larger value
            out.setdefault(self._token_text(joint), value)
        return out

    def _summary(self, gen: Generation | None, request: Request) -> dict:
        if gen is None:
            return {"steps": 0}
        return {
            "steps": gen.n_tokens,
            "consulted": gen.n_consulted,
            "applied": gen.n_applied,
            "overrides": gen.n_overrides,
            "intervention_rate": round(gen.intervention_rate, 6),
            "override_rate": round(gen.override_rate, 6),
            "stop_reason": gen.stop_reason,
            "seed": request.seed,
        }

    def _done(self, job: Job) -> None:
        guide_tok = self.guidance.tokenizer if self.guidance is not None else None
        texts = [gen.text for _, gen in job.outputs.values() if gen is not None]
        usage = {
            "prompt_tokens": sum(len(ids) for ids in job.lead_ids),
            "completion_tokens": sum(len(gen.token_ids) for _, gen in job.outputs.values() if gen is not None),
            "guidance_prompt_tokens": sum(len(ids) for ids in job.guide_ids if ids is not None),
            "guidance_completion_tokens": sum(len(guide_tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
            if guide_tok is not None
            else 0,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        job.finished = True
        self.counts["finished"] += 1
        job.emit(("done", usage))

    def _fail(self, job: Job, err: ServeError) -> None:
        if job.failed:
            return
        job.failed = True
        self.counts["refused" if err.status < 500 else "failed"] += 1
        self._drop(job, None)
        job.emit(("error", err))

    def _drop(self, job: Job, count: str | None) -> None:
        """Take every row of a job out of the queue, the batches and the scoring list (`count`: the
        counter it goes to; a job that already finished or failed is left alone)."""
        if count and (job.finished or job.failed):
            return
        for key in list(self._batches):
            mine = [live for live in self._members[key] if live.job is job]
            if not mine:
                continue
            self._members[key] = [live for live in self._members[key] if live.job is not job]
            rows = [live.row for live in mine if live.row is not None]
            for live in mine:
                if live.row is not None:
                    self._by_row.pop(id(live.row), None)
                    live.row = None
            try:
                self._batches[key].remove(rows)
            except Exception as err:
                self._take_apart(key, err)
                continue
            if not self._batches[key].rows:
                del self._batches[key], self._members[key]
        kept: deque[_Live] = deque()
        for live in self._waiting:
            if live.job is job:
                if live.queued:
                    self._release(1)
            else:
                kept.append(live)
        self._waiting = kept
        self._scoring = [j for j in self._scoring if j is not job]
        if count:
            self.counts[count] += 1

    def _fail_all(self, err: ServeError) -> None:
        jobs = {id(live.job): live.job for live in self._waiting}
        for members in self._members.values():
            jobs.update({id(live.job): live.job for live in members})
        jobs.update({id(job): job for job in self._scoring})
        self._batches, self._members, self._by_row = {}, {}, {}
        for job in jobs.values():
            self._fail(job, err)
        with self._cv:
            inbox, self._inbox = self._inbox, []
            self._queued = 0
        for job in inbox:
            job.emit(("error", err))


def step_facts(gen: Generation | None) -> list[dict]:
    """Per step of an output: who chose its token (source: base, guidance or blend, with the blend's
    weight alpha), the base's top-1 probability u, whether the step consulted the guidance (u < tau),
    applied it, and changed the base's own top token (override), and where the step's text ends."""
    if gen is None:
        return []
    t = gen.trace
    end = len(gen.text)
    return [
        {
            "source": SOURCE_NAMES[int(t["source"][i])],
            "alpha": None if math.isnan(t["alpha"][i]) else round(float(t["alpha"][i]), 6),
            "base_top_prob": round(float(t["base_top_prob"][i]), 6),
            "consulted": bool(t["consulted"][i]),
            "applied": bool(t["applied"][i]),
            "override": bool(t["override"][i]),
            "text_offset": min(int(t["text_offset"][i]), end),
        }
        for i in range(gen.n_tokens)
    ]


def check_servable(spec) -> None:
    """The server decodes token by token through the engine: word-level NUDGING and teacher forcing
    are refused with the methods it serves named."""
    if spec.decoder != "token" or not spec.decodes:
        from .methods import REGISTRY

        served = [m.name for m in REGISTRY.values() if m.decoder == "token" and m.decodes]
        raise ConfigError(
            f"method {spec.name} ({spec.summary}) does not decode token by token through the engine, so it "
            f"cannot be served. Fix: one of {', '.join(served)}"
        )


def release_freed_memory() -> None:
    """Hand the memory the C allocator keeps from freed tensors back to the system (glibc's
    malloc_trim; elsewhere nothing), so that an idle server's resident memory is what it holds."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory(device: torch.device) -> dict:
    """The process's resident memory and, on CUDA, the memory torch holds (MiB)."""
    out: dict = {}
    try:
        with open("/proc/self/statm") as f:
            out["rss_mb"] = round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError):
        out["rss_mb"] = None
    if device.type == "cuda":
        out["device_allocated_mb"] = round(torch.cuda.memory_allocated(device) / 2**20, 1)
    return out
