"""Token streams: one model decoding a batch of rows that grow by different amounts.

Each step a row may append any number of tokens (0 when nothing changed, several when a
guidance-only token is spelled in base tokens, or when a re-tokenized text view changes) and may
discard some of its latest tokens (a text view cropped to the longest common prefix).

`CachedStream` keeps one batched KV cache (`RowCache`) in which every row is left-aligned: row i's
tokens fill columns 0 .. len_i - 1, so a column is a position, there are no holes, and the widest
attention mask is the longest real row. A step writes each row's new tokens at its own next columns
(a scatter: rows that feed fewer tokens than the widest pad the chunk on the left and write the
padding past their end, where no real query looks). The masks are built on the device from the row
lengths, so a step copies only its chunk and the lengths to the device, in one transfer. The
buffer's capacity is planned once (longest prompt + the budget the caller gives as `headroom`) and
grows only if a row outruns the plan.

Rows come and go in place: `select` keeps some rows (finished rows leave the batch and stop costing
compute; the kept rows move down into the freed slots, layer by layer, so no second copy of the KV is
ever held), and `admit` prefills new prompts straight into free slots (the cache is planned for the
batch's rows and grows only when more rows arrive than were planned).

Sliding-window layers (Gemma-2/3, Mistral) see the last W positions, which are the last W columns
of the row. `RecomputeStream` has the same interface and recomputes every row from scratch each
step; it is the reference the tests hold the cached stream to.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .errors import ConfigError
from .transfer import to_device


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of rows of different lengths, padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (as transformers' generate does for left padding)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def sliding_window(config) -> int | None:
    """The attention window of a model with sliding-window layers, else None."""
    text = config.get_text_config()
    types = getattr(text, "layer_types", None)
    if types is not None:
        return text.sliding_window if "sliding_attention" in types else None
    return getattr(text, "sliding_window", None)  # one mask type for every layer (Mistral)


def attention_masks(model, visible: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, additive_dtype=None):
    """4D attention masks for any visibility pattern (padding holes, a tree of alternatives).

    visible [B, Q, K] bool: which keys each query may see; q_pos [B, Q], k_pos [B, K]: real positions.
    Sliding-window layers also drop keys W or more positions back. A query that sees nothing (a
    padding slot) sees the key in its own column so that softmax has no NaN. Returns what the model's
    forward takes as `attention_mask`: one tensor, or a dict per layer type for models that mix
    full and sliding layers. additive_dtype: for eager attention, additive float masks of that dtype.
    """
    window = sliding_window(model.config)
    kinds = {"full_attention": visible}
    if window is not None:
        kinds["sliding_attention"] = visible & (q_pos[:, :, None] - k_pos[:, None, :] < window)
    own = torch.zeros(visible.shape[1:], dtype=torch.bool, device=visible.device)
    queries, keys = visible.shape[1], visible.shape[2]
    device = visible.device  # query q sits in column K - Q + q
    own[torch.arange(queries, device=device), torch.arange(keys - queries, keys, device=device)] = True
    masks = {}
    for kind, seen in kinds.items():
        seen = (seen | (own[None] & ~seen.any(-1, keepdim=True)))[:, None]  # [B, 1, Q, K]
        if additive_dtype is not None:  # eager attention adds the mask to the scores
            seen = torch.zeros(seen.shape, dtype=additive_dtype, device=seen.device).masked_fill(
                ~seen, torch.finfo(additive_dtype).min
            )
        masks[kind] = seen
    if window is None:
        return masks["full_attention"]
    per_layer_type = getattr(model.config.get_text_config(), "layer_types", None) is not None
    return masks if per_layer_type else masks["sliding_attention"]


def cache_argument(model) -> str:
    """The forward's name for the KV cache: `cache` (transformers >= 5.24), else `past_key_values`."""
    name = getattr(model, "_blendin_cache_argument", None)
    if name is None:
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        model._blendin_cache_argument = name
    return name


COMPILE_MODES = ("none", "compile", "cudagraphs")
WIDTH_BUCKET = 256  # cudagraphs: attended widths are rounded up to a multiple of this (fewer graphs to record)


def check_compile(mode: str, device: torch.device) -> str:
    """The compile mode, if it is one and can run on `device`; else a ConfigError naming the fix."""
    if mode not in COMPILE_MODES:
        raise ConfigError(
            f"compile={mode!r} must be one of {', '.join(COMPILE_MODES)} (none: eager; compile: "
            "torch.compile; cudagraphs: CUDA graphs through torch.compile, GPU only)"
        )
    if mode == "cudagraphs" and device.type != "cuda":
        raise ConfigError(
            "compile=cudagraphs needs a CUDA device. Fix: compile=compile (torch.compile, any device) or compile=none"
        )
    return mode


def decode_forward(model, mode: str):
    """What runs a decode step (every row feeds one token): the model itself (`none`), the model
    through `torch.compile` with dynamic shapes (`compile`: one graph for every batch size and
    width), or the same captured as CUDA graphs (`cudagraphs`: torch.compile's reduce-overhead mode,
    one graph per batch bucket and width bucket). Prefill and steps that feed several tokens to a row
    stay eager. Compiled once per model and process."""
    if mode == "none":
        return model
    compiled = model.__dict__.setdefault("_blendin_compiled", {})
    if mode not in compiled:
        options = {"mode": "reduce-overhead"} if mode == "cudagraphs" else {}
        compiled[mode] = torch.compile(model, dynamic=True, **options)
    return compiled[mode]


def batch_bucket(rows: int, slots: int) -> int:
    """cudagraphs: the batch a decode step runs at, rows rounded up to a power of two (at most the
    planned slots), so that rows leaving and joining reuse a few recorded graphs."""
    return min(1 << max(0, rows - 1).bit_length(), max(slots, rows))


class RowPlan:
    """What the layers of one `RowCache` share: the buffer's planned size and what the next forward
    writes and reads. It is kept apart from the cache so that nothing refers back to the cache: a
    cache that is dropped frees its buffers at once, not at the garbage collector's next pass."""

    def __init__(self, rows: int, capacity: int, static: bool):
        self.rows, self.capacity, self.static = rows, capacity, static
        self.first_row = 0  # the slot of the forward's first row (new prompts are prefilled in free slots)
        self.key_columns: torch.Tensor | None = None  # arange(width): the columns the next forward attends to
        self.write_columns: torch.Tensor | None = None  # [B, Q]: where it writes its new keys and values

    def mark_static(self, *buffers: torch.Tensor) -> None:
        """CUDA graphs (compile=cudagraphs) replay on fixed addresses: tell torch.compile that these
        buffers, written in place by every step, keep theirs (they move only when the plan grows)."""
        if self.static:
            for buffer in buffers:
                torch._dynamo.mark_static_address(buffer)


class RowLayer(DynamicLayer):
    """One layer's keys and values, [slots, heads, capacity, dim], zero-filled (masked columns must
    hold finite numbers). A forward over rows first_row .. first_row + B - 1 writes its new tokens at
    the columns the plan says and returns those rows' first `width` columns for attention."""

    def __init__(self, plan: RowPlan):
        super().__init__()
        self.plan = plan
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        plan = self.plan  # the heads are the ones this process holds (a tensor-parallel shard has fewer)
        self._k = key_states.new_zeros((plan.rows, key_states.shape[1], plan.capacity, key_states.shape[-1]))
        self._v = value_states.new_zeros((plan.rows, value_states.shape[1], plan.capacity, value_states.shape[-1]))
        plan.mark_static(self._k, self._v)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self.plan
        assert self._k is not None and self._v is not None and plan.key_columns is not None
        rows = slice(plan.first_row, plan.first_row + key_states.shape[0])
        k, v = self._k[rows], self._v[rows]
        where = plan.write_columns[:, None, :, None]
        k.scatter_(2, where.expand_as(key_states), key_states)
        v.scatter_(2, where.expand_as(value_states), value_states)
        width = plan.key_columns.shape[0]  # a shape, not an int: compiled steps see a symbol
        return k[:, :, :width], v[:, :, :width]

    def get_seq_length(self) -> int:
        # `CachedStream._forward` sets the columns before each forward
        assert self.plan.key_columns is not None, "no forward has set the key columns yet"
        return self.plan.key_columns.shape[0]

    def compact(self, keep: torch.Tensor, width: int) -> None:
        """Rows `keep` (slot indices) move to slots 0 .. len(keep) - 1, in place (their first `width`
        columns): the buffer keeps its address, and the only extra memory is one layer's kept rows."""
        n = keep.shape[0]
        for buffer in (self._k, self._v):
            assert buffer is not None
            buffer[:n, :, :width] = buffer[keep, :, :width]

    def resize(self, rows: int, capacity: int, used_rows: int, width: int) -> None:
        """A larger buffer (the plan grew), holding the first `width` columns of the first `used_rows`
        rows. The old buffer is freed before the next layer's new one is made."""
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = old.new_zeros((rows, old.shape[1], capacity, old.shape[-1]))
            new[:used_rows, :, :width] = old[:used_rows, :, :width]
            setattr(self, name, new)
            del old
            self.plan.mark_static(new)


class RowCache(Cache):
    """The cache of a `CachedStream`: one `RowLayer` per model layer over a planned number of row
    slots and columns. Rows leave by `compact` and join in free slots, in place; the buffers are
    re-made only when the plan grows (more rows, or a row past the planned columns)."""

    def __init__(self, layers: int, rows: int, capacity: int, static: bool = False):
        self.plan = RowPlan(rows, capacity, static)
        super().__init__(layers=[RowLayer(self.plan) for _ in range(layers)])

    @property
    def capacity(self) -> int:
        return self.plan.capacity

    @property
    def slots(self) -> int:
        return self.plan.rows

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers if layer.is_initialized for t in (layer._k, layer._v)]

    def compact(self, keep: torch.Tensor, width: int) -> None:
        for layer in self.layers:
            if layer.is_initialized:
                layer.compact(keep, width)

    def grow(self, rows: int, capacity: int, used_rows: int, width: int) -> None:
        """Plan at least `rows` slots and `capacity` columns, keeping what the used rows hold."""
        rows, capacity = max(rows, self.plan.rows), max(capacity, self.plan.capacity)
        if (rows, capacity) == (self.plan.rows, self.plan.capacity):
            return
        self.plan.rows, self.plan.capacity = rows, capacity
        for layer in self.layers:
            if layer.is_initialized:
                layer.resize(rows, capacity, used_rows, width)


def model_layers(model) -> int:
    return model.config.get_text_config().num_hidden_layers


class CachedStream:
    """One model + one batched KV cache over ragged rows (see module doc)."""

    logits: torch.Tensor | None  # each row's next-token logits [B, V]; None until a token was fed (`admit`)

    def __init__(
        self,
        model,
        pad_id: int,
        headroom: int = 256,
        clock=None,
        role: str = "model",
        compile: str = "none",
        rows: int = 1,
        cache: RowCache | None = None,
    ):
        """headroom: columns planned beyond the longest prompt; clock: a `transfer.Clock` that times
        the forward passes under "<role>_forward" ("<role>_prefill" for prompts); compile: how decode
        steps run (`decode_forward`); rows: the rows planned to decode together (the batch size);
        cache: a cache to decode into (its rows are reused, its buffers grow if the plan needs it)."""
        self.model, self.pad_id, self.headroom, self.clock, self.role = model, pad_id, headroom, clock, role
        self.compile, self.planned_rows = compile, rows
        self.decode_model = decode_forward(model, compile)
        self.device = next(model.parameters()).device
        attention = model.config._attn_implementation
        if attention not in ("sdpa", "eager"):
            raise ConfigError(
                f"{type(model).__name__} is loaded with attn_implementation={attention}, which takes no "
                "custom attention masks (rows of different lengths share one cache). "
                "Fix: load it with attn_implementation='sdpa' (the default) or 'eager'"
            )
        self.additive_dtype = next(model.parameters()).dtype if attention == "eager" else None
        self.cache_argument = cache_argument(model)
        self.rows: list[list[int]] = []
        self.cache = cache
        self.logits = None
        self.uncommitted = 0  # tokens each row has read from the device that the host has not recorded yet
        self.widest = 0  # the widest attention mask passed to the model so far (columns)
        self.forward_passes = 0
        self.prefilling = False

    def __len__(self) -> int:
        return len(self.rows)

    def tokens(self, row: int) -> list[int]:
        return self.rows[row]

    def tensors(self) -> list[torch.Tensor]:
        """The device tensors this stream holds (its logits and cache buffers)."""
        return ([self.logits] if self.logits is not None else []) + (self.cache.tensors() if self.cache else [])

    @torch.inference_mode()
    def admit(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill new rows (placed after the current ones, in free slots of the cache); return the
        next-token logits of every row [B, V]."""
        first, longest = len(self.rows), max(len(p) for p in prompts) + self.headroom
        if self.cache is None:
            rows = max(self.planned_rows, len(prompts))
            self.cache = RowCache(model_layers(self.model), rows, longest, static=self.compile == "cudagraphs")
        else:
            used = max((len(r) for r in self.rows), default=0)
            self.cache.grow(first + len(prompts), longest, first, used)
        self.rows += [[] for _ in prompts]
        self.prefilling = True
        try:
            fresh = self._feed(first, [list(p) for p in prompts], keep=1)[:, -1].float()
        finally:
            self.prefilling = False
        self.logits = fresh if first == 0 or self.logits is None else torch.cat([self.logits, fresh])
        return self.logits

    @torch.inference_mode()
    def step(
        self,
        new: list[list[int]],
        drop: list[int] | None = None,
        all_logits: bool = False,
        tail: torch.Tensor | None = None,
    ):
        """Discard `drop[i]` trailing tokens of row i, append `new[i]`; return next-token logits [B, V].

        all_logits=True also returns, per row, the logits after each appended token ([len(new[i]), V]),
        e.g. to check several draft words in one pass.
        tail: K more tokens per row [B, K], still on the device (drafts), read after `new` in the same
        forward; then the return is the logits at the last K + 1 positions of each row, [B, K + 1, V]
        (before the first tail token, and after each), and `commit` records the tail once it is known.
        """
        drop = list(drop or [0] * len(new))
        new = [list(n) for n in new]
        refed = [0] * len(new)  # tokens re-fed so that a cropped row has fresh logits
        for i in range(len(new)):
            if drop[i] and not new[i]:  # the logits must come from a fed token: re-feed the last kept one
                drop[i] += 1
                new[i] = [self.rows[i][-drop[i]]]
                refed[i] = 1
            if drop[i]:
                del self.rows[i][-drop[i] :]
        counts = [len(n) for n in new]
        if tail is not None:
            return self._read_tail(new, counts, tail)
        if max(counts, default=0) == 0:
            if not all_logits:
                return self.logits
            assert self.logits is not None, "per-row logits need a fed token (prompts are not empty)"
            return self.logits, [self.logits[i:i, :] for i in range(len(new))]
        logits = self._feed(0, new, keep=0 if all_logits else 1)
        last = logits[:, -1].float()
        if self.logits is None or all(counts):
            self.logits = last
        else:  # rows that read nothing keep their logits
            self.logits = torch.where(
                to_device([c > 0 for c in counts], torch.bool, self.device)[:, None], last, self.logits
            )
        if not all_logits:
            return self.logits
        assert logits is not None
        queries = logits.shape[1]
        per_row = [logits[i, queries - c + r :].float() for i, (c, r) in enumerate(zip(counts, refed))]
        return self.logits, per_row

    def _read_tail(self, new: list[list[int]], counts: list[int], tail: torch.Tensor) -> torch.Tensor:
        """`step` with a tail: one forward over each row's new tokens and the K tail tokens."""
        k = tail.shape[1]
        before = self.logits  # a row that reads nothing before the tail: its logits there are the ones it had
        assert before is not None, "rows were admitted first"
        if max(counts) == 0:
            logits = torch.cat([before[:, None], self._feed(0, new, keep=k, tail=tail).float()], dim=1)
        else:
            logits = self._feed(0, new, keep=k + 1, tail=tail).float()
            if min(counts) == 0:
                read = to_device([c > 0 for c in counts], torch.bool, self.device)[:, None]
                logits[:, 0] = torch.where(read, logits[:, 0], before)
        self.logits = logits[:, -1]
        self.uncommitted = k
        return logits

    def _feed(self, first: int, new: list[list[int]], keep: int, tail: torch.Tensor | None = None) -> torch.Tensor:
        """One forward over rows first .. first + len(new) - 1, appending new[i] to each (rows with no
        new token write padding past their end), then the device tokens `tail` [B, K] if given. Returns
        the logits of the chunk's last `keep` positions (0: all) [B, keep, V]."""
        assert self.cache is not None, "rows were admitted first"
        counts = [len(n) for n in new]
        queries = max(counts)
        lengths = [len(self.rows[first + i]) for i in range(len(new))]
        extra = 0 if tail is None else tail.shape[1]
        self._reserve(max(lengths) + queries + extra)
        # One host-to-device copy: each row's new tokens right-aligned in the chunk (so the chunk's
        # last position is every fed row's last token), then its length and count.
        packed = [[self.pad_id] * (queries - c) + n + [length, c] for n, c, length in zip(new, counts, lengths)]
        packed = to_device(packed, torch.long, self.device)
        ids, length, count = packed[:, :queries], packed[:, queries : queries + 1], packed[:, queries + 1 :]
        j = torch.arange(queries, device=self.device)[None, :]
        start = queries - count  # chunk index of a row's first real token
        # a real token lands right after the row's tokens; a padding slot further on (past the tail's
        # tokens too), where no real query looks: columns are positions, and no row has holes
        columns = torch.where(j >= start, length + j - start, length + count + extra + j)
        if tail is not None:  # right after each row's new tokens
            ids = torch.cat([ids, tail], dim=1)
            columns = torch.cat([columns, length + count + torch.arange(extra, device=self.device)[None, :]], dim=1)
        for i, n in enumerate(new):
            self.rows[first + i].extend(n)
        width = max(n + c for n, c in zip(lengths, counts)) + extra
        return self._forward(ids, columns, width, keep=keep, first=first)

    @torch.inference_mode()
    def speculate(self, ids: torch.Tensor) -> None:
        """Feed every row one token that is still on the device (a step's choice, or a draft, before the
        host has read it); `commit` then records the tokens in the rows. The forward is queued at once,
        so on a GPU it runs while the host works through the step's results. Several calls may come
        before one `commit`."""
        lengths = [len(r) + self.uncommitted for r in self.rows]
        self._reserve(max(lengths) + 1)
        columns = to_device(lengths, torch.long, self.device)[:, None]
        self.logits = self._forward(ids[:, None], columns, max(lengths) + 1, keep=1)[:, -1].float()
        self.uncommitted += 1

    def commit(self, ids: list[list[int]]) -> None:
        """The tokens fed from the device since the last commit (`speculate`, a `step` tail), per row, as
        the host now knows them."""
        for row, tokens in zip(self.rows, ids):
            row.extend(tokens)
        self.uncommitted = 0

    def _reserve(self, columns: int) -> None:
        assert self.cache is not None
        if columns > self.cache.capacity:  # past the plan: grow once, by half again
            used = max(len(r) for r in self.rows) + self.uncommitted
            self.cache.grow(self.cache.slots, max(columns, self.cache.capacity * 3 // 2), len(self.rows), used)

    def _forward(self, ids: torch.Tensor, columns: torch.Tensor, width: int, keep: int, first: int = 0):
        """One forward pass over rows first .. first + B - 1 writing the chunk `ids` [B, Q] at `columns`
        [B, Q] and attending to the first `width` columns (each query sees the columns up to its own;
        sliding windows in positions)."""
        assert self.cache is not None
        rows = ids.shape[0]
        graphed = self.compile == "cudagraphs" and ids.shape[1] == 1 and first == 0
        if graphed:  # few distinct shapes, few graphs to record: round the width and the batch up
            width = min(-(-width // WIDTH_BUCKET) * WIDTH_BUCKET, self.cache.capacity)
            padded = batch_bucket(rows, self.cache.slots)
            if padded > rows:  # the extra rows are free slots: they write column 0, which no row reads
                ids = torch.cat([ids, ids.new_full((padded - rows, 1), self.pad_id)])
                columns = torch.cat([columns, columns.new_zeros((padded - rows, 1))])
        plan = self.cache.plan
        keys = torch.arange(width, device=self.device)
        plan.first_row, plan.write_columns, plan.key_columns = first, columns, keys
        visible = keys[None, None, :] <= columns[:, :, None]
        masks = attention_masks(
            self.model, visible, columns, keys[None, :].expand(len(columns), -1), self.additive_dtype
        )
        self.widest = max(self.widest, width)
        self.forward_passes += 1
        started = self.clock.start() if self.clock else None
        model = self.decode_model if ids.shape[1] == 1 and first == 0 else self.model
        if graphed:  # a new generation of graph outputs: the previous ones were copied out
            torch.compiler.cudagraph_mark_step_begin()
        out = model(
            input_ids=ids,
            attention_mask=masks,
            position_ids=columns,
            use_cache=True,
            logits_to_keep=keep,
            **{self.cache_argument: self.cache},
        )
        logits = out.logits[:rows]
        if graphed:  # the graphs' outputs live in a pool that the next replay (of either model) reuses
            logits = logits.clone()
        if self.clock:
            self.clock.stop(f"{self.role}_{'prefill' if self.prefilling else 'forward'}", started)
        return logits

    def select(self, keep: list[int]) -> None:
        """Keep only the rows `keep`, in that order (the others leave the batch; their slots are free)."""
        if keep == list(range(len(self.rows))):
            return
        if not keep:  # every row left: the next admit starts at slot 0 of the same buffers
            self.rows, self.logits = [], None
            return
        assert self.cache is not None and self.logits is not None, "the stream has rows, so it was fed"
        width = max(len(self.rows[i]) for i in keep)
        self.rows = [self.rows[i] for i in keep]
        index = to_device(keep, torch.long, self.device)
        self.logits = self.logits[index]
        if keep != list(range(len(keep))):  # only rows at the end left: the others are where they were
            self.cache.compact(index, width)


class RecomputeStream:
    """Same interface as CachedStream, no cache: every step recomputes the changed rows in full."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.rows: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        self.rows = [list(p) for p in prompts]
        self.logits = self._forward(list(range(len(prompts))))
        return self.logits

    def tokens(self, row: int) -> list[int]:
        return self.rows[row]

    def step(self, new: list[list[int]], drop: list[int] | None = None, all_logits: bool = False):
        drop = drop or [0] * len(new)
        changed = [i for i in range(len(new)) if new[i] or drop[i]]
        for i in changed:
            if drop[i]:
                del self.rows[i][-drop[i] :]
            self.rows[i].extend(new[i])
        if changed:
            self.logits = self.logits.clone()
            self.logits[changed] = self._forward(changed)
        if not all_logits:
            return self.logits
        per_row = []
        for i, n in enumerate(new):
            if not n:
                per_row.append(self.logits[i:i, :])
                continue
            full = self._forward([i], keep=len(n))
            per_row.append(full[0].reshape(len(n), -1))
        return self.logits, per_row

    def select(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        self.logits = self.logits[torch.tensor(keep, dtype=torch.long, device=self.device)]

    def admit(self, prompts: list[list[int]]) -> torch.Tensor:
        """Add rows after the current ones; return the logits of every row."""
        first = len(self.rows)
        self.rows += [list(p) for p in prompts]
        fresh = self._forward(list(range(first, len(self.rows))))
        self.logits = fresh if first == 0 else torch.cat([self.logits, fresh])
        return self.logits

    @torch.inference_mode()
    def _forward(self, which: list[int], keep: int = 1) -> torch.Tensor:
        ids, mask = _left_pad([self.rows[i] for i in which], self.pad_id)
        mask = mask.to(self.device)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask,
            position_ids=_positions(mask),
            use_cache=False,
            logits_to_keep=keep,
        )
        return out.logits[:, -1, :].float() if keep == 1 else out.logits[:, -keep:, :].float()
