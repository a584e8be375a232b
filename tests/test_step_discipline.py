"""What a decoding step may cost beyond its forward passes: one copy to the host, no other read of a
device value, attention masks no wider than the longest row, and the same outputs on every
guidance schedule. On a GPU each read of a device value (`.item()`, `.tolist()`, `bool(tensor)`,
`nonzero`) waits for the device, so these are counted on the CPU where the tests run."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import PROMPTS
from test_engine import GUIDED, MAX_NEW

from blendin import engine
from blendin.prompts import Prompt
from blendin.sampling import Sampling
from blendin.transfer import SYNCS

READS = ("item", "tolist", "__bool__", "nonzero", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def counted_steps(batch_class=engine._Batch):
    """Count, per decode step (`batch_class.step`: a step, or a speculative round), the copies to the host
    and every other read of a tensor value."""
    counts = []
    reads = {"n": 0, "where": []}
    original_step = batch_class.step
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        def read(self, *args, **kwargs):
            reads["n"] += 1
            reads["where"].append(name)
            return originals[name](self, *args, **kwargs)

        return read

    def step(self):
        syncs, before = SYNCS.count, reads["n"]
        for name in READS:
            setattr(torch.Tensor, name, counting(name))
        try:
            return original_step(self)
        finally:
            for name, method in originals.items():
                setattr(torch.Tensor, name, method)
            counts.append((SYNCS.count - syncs, reads["n"] - before))

    batch_class.step = step
    try:
        yield counts, reads
    finally:
        batch_class.step = original_step


@pytest.mark.parametrize(
    "overlap, sampling",
    [(False, None), (True, None), (True, Sampling(temperature=0.8, top_p=0.9))],
    ids=["plain", "overlap", "overlap-sampled"],
)
@pytest.mark.parametrize("kind", ["shared", "cross"])
@pytest.mark.parametrize("method", [{"name": "base"}] + GUIDED, ids=lambda m: f"{m['name']}-{m.get('top_k', '')}")
def test_a_decode_step_copies_to_the_host_once_and_reads_nothing_else(
    kind, method, overlap, sampling, shared_pair, cross_pair
):
    pair = shared_pair if kind == "shared" else cross_pair
    decoder = pair.decoder(method, guidance_schedule="every", overlap=overlap, sampling=sampling)
    with counted_steps() as (counts, reads):
        decoder.generate([Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW, batch_size=3)
    assert len(counts) >= MAX_NEW
    assert reads["n"] == 0, f"device values read outside the one copy: {sorted(set(reads['where']))}"
    # the top-p size past 256 tokens is the one fact that may need a second look (a flat distribution)
    assert all(syncs == 1 for syncs, _ in counts), counts


def test_the_lazy_schedule_reads_one_flag_more():
    """On a CPU the guidance runs only where some row is unsure: one flag read first, then the copy."""
    assert engine.resolve_schedule("auto", torch.device("cpu")) == "lazy"
    assert engine.resolve_schedule("auto", torch.device("cuda")) == "every"
    with pytest.raises(engine.ConfigError, match="guidance_schedule"):
        engine.resolve_schedule("sometimes", torch.device("cpu"))


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_every_guidance_schedule_gives_the_same_outputs_and_traces(kind, shared_pair, cross_pair):
    pair = shared_pair if kind == "shared" else cross_pair
    prompts = [Prompt(p) for p in PROMPTS]
    for method, drawn in [(m, None) for m in GUIDED + [{"name": "probe", "tau": 0.4}]] + [
        (GUIDED[0], Sampling(temperature=1.0, seed=2))  # a sampled run draws the same tokens under both schedules
    ]:
        lazy, every = (
            pair.decoder(method, guidance_schedule=schedule, sampling=drawn).generate(
                prompts, max_new_tokens=MAX_NEW, batch_size=3
            )
            for schedule in ("lazy", "every")
        )
        for a, b in zip(lazy, every):
            assert a.token_ids == b.token_ids, method
            for column in ("applied", "guide_top_id", "guide_top_rank", "base_top_p_size"):
                assert a.trace[column] == b.trace[column], (method, column)
            # the guidance reads a token at a time or several at once: float sums in another order
            assert a.trace["alpha"] == pytest.approx(b.trace["alpha"], rel=1e-5, nan_ok=True), method


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_attention_masks_are_no_wider_than_the_longest_row(kind, shared_pair, cross_pair):
    """Measured on what the models receive: rows that grow by different amounts leave no holes."""
    pair = shared_pair if kind == "shared" else cross_pair
    widths = {"base": [], "guidance": []}
    hooks = []
    for role in widths:
        model = pair.model(role).model

        def record(module, args, kwargs, role=role):
            mask = kwargs.get("attention_mask")
            mask = next(iter(mask.values())) if isinstance(mask, dict) else mask
            widths[role].append(mask.shape[-1])

        hooks.append(model.register_forward_pre_hook(record, with_kwargs=True))
    try:
        for method in (
            {"name": "nudging", "tau": 0.6},
            {"name": "blendin", "tau": 0.6},
            {"name": "nudging_words", "tau": 0.6},
        ):
            decoder = pair.decoder(method)
            outs = decoder.generate([Prompt(p) for p in PROMPTS], max_new_tokens=MAX_NEW, batch_size=4)
            base, guide = pair.model("base"), pair.model("guidance")
            longest = {
                "base": max(
                    len(base.prompt_ids(Prompt(p))) + len(base.tokenizer(o.text)["input_ids"]) + 4
                    for p, o in zip(PROMPTS, outs)
                ),
                "guidance": max(
                    len(guide.prompt_ids(Prompt(p)))
                    + len(guide.tokenizer(o.text)["input_ids"])
                    + method.get("draft_tokens", 16)
                    + 4
                    for p, o in zip(PROMPTS, outs)
                ),
            }
            for role in widths:
                assert max(widths[role]) <= longest[role], (method, role, max(widths[role]), longest[role])
            assert decoder.stats["widest_mask"] <= decoder.stats["longest_row"], decoder.stats
            for role in widths:
                widths[role].clear()
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("schedule", ["lazy", "every"])
@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_feeding_the_chosen_tokens_before_the_host_reads_them_changes_nothing(kind, schedule, shared_pair, cross_pair):
    """overlap=True (the default on CUDA) queues the next forward on the step's tokens while they are
    still on the device; where that guess is incomplete (a guidance-only token spelled in several base
    tokens) or moot (a row that ended) the next feed puts it right."""
    pair = shared_pair if kind == "shared" else cross_pair
    prompts = [Prompt(p) for p in PROMPTS]
    for method in [{"name": "base"}] + GUIDED + [{"name": "probe", "tau": 0.4}]:
        drawn = Sampling(temperature=1.0, seed=5) if method["name"] == "blendin" else None  # sampled tokens too
        plain = pair.decoder(method, guidance_schedule=schedule, overlap=False, sampling=drawn)
        ahead = pair.decoder(method, guidance_schedule=schedule, overlap=True, sampling=drawn)
        expected = plain.generate(prompts, max_new_tokens=MAX_NEW, stop_strings=["e."], batch_size=3)
        got = ahead.generate(prompts, max_new_tokens=MAX_NEW, stop_strings=["e."], batch_size=3)
        assert [o.token_ids for o in got] == [o.token_ids for o in expected], method
        assert [o.trace["applied"] for o in got] == [o.trace["applied"] for o in expected]
        assert [o.stop_reason for o in got] == [o.stop_reason for o in expected]
