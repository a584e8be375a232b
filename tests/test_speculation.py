"""Speculative decoding (`speculate: K`): the guidance drafts, the base checks the drafts in one pass.

Greedy: token for token (and trace row for trace row) what step-by-step decoding gives, for every
token-level method, one tokenizer and two, batch 1 and batched with rows finishing and prompts joining,
K = 1, 4, 8. Sampling: the first tokens fit the method's distribution computed from the two models'
own forward passes, and the first two tokens fit step-by-step sampling's (chi-square, each with a
negative control); draws do not depend on the batch."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
from conftest import PROMPTS
from scipy.stats import chi2_contingency
from test_sampling import _padded, chi_square_p, expected

from blendin.errors import ConfigError
from blendin.prompts import Prompt
from blendin.sampling import Sampling, stream_key

PROMPTS8 = [Prompt(p) for p in (PROMPTS * 3)[:9]]  # more prompts than a batch: rows join as others finish
MAX_NEW = 20
EVERY_METHOD = [
    {"name": "base"},
    {"name": "nudging"},
    {"name": "blendin"},
    {"name": "blendin", "top_k": None},
    {"name": "cap", "warmup": 2},
    {"name": "af"},
    {"name": "cc"},
    {"name": "af_cc"},
    {"name": "probe"},
]


def _compare(pair, method, k: int, batch_size: int, prompts=PROMPTS8, max_new=MAX_NEW, stop=("e",)):
    plain = pair.decoder(method).generate(prompts, max_new_tokens=max_new, batch_size=batch_size, stop_strings=stop)
    decoder = pair.decoder(method, speculate=k)
    fast = decoder.generate(prompts, max_new_tokens=max_new, batch_size=batch_size, stop_strings=stop)
    for a, b in zip(plain, fast):
        assert b.token_ids == a.token_ids and b.text == a.text and b.stop_reason == a.stop_reason, (method, k)
        # every fact the step would record, position by position (probabilities up to float32 rounding:
        # the base read the drafts in one pass, not one at a time)
        pd.testing.assert_frame_equal(pd.DataFrame(b.trace), pd.DataFrame(a.trace), check_exact=False, rtol=1e-4)
        assert b.extras["drafts_proposed"] >= b.extras["drafts_accepted"] >= 0
    return decoder


@pytest.mark.parametrize("kind", ["shared", "cross"])
@pytest.mark.parametrize("method", EVERY_METHOD, ids=lambda m: f"{m['name']}-{m.get('top_k', '')}")
def test_speculative_greedy_decoding_equals_step_by_step(kind, method, shared_pair, cross_pair):
    pair = shared_pair if kind == "shared" else cross_pair
    for batch_size in (1, 8):
        decoder = _compare(pair, method, 4, batch_size)
    assert decoder.stats["lead_passes"] > 0


@pytest.mark.parametrize("k", [1, 8])
@pytest.mark.parametrize("method", [{"name": "nudging"}, {"name": "blendin"}], ids=lambda m: m["name"])
def test_any_number_of_drafts_gives_the_same_outputs(k, method, shared_pair, cross_pair):
    for pair in (shared_pair, cross_pair):
        _compare(pair, method, k, 3)


def test_nudging_keeps_the_guidances_drafts_where_the_base_is_unsure(shared_pair):
    """With tau = 1 NUDGING takes the guidance's token at every step: with one tokenizer every draft is
    kept, so each base pass yields K + 1 tokens."""
    decoder = _compare(shared_pair, {"name": "nudging", "tau": 1.0}, 4, 2, stop=())
    proposed, accepted = decoder.stats["drafts_proposed"], decoder.stats["drafts_accepted"]
    tokens = len(PROMPTS8) * MAX_NEW
    assert accepted / proposed > 0.75, (accepted, proposed)
    assert decoder.stats["lead_passes"] < tokens / 3, decoder.stats  # about one base pass per 5 tokens


@pytest.mark.parametrize("sampling", [None, Sampling(temperature=0.8, top_p=0.9)], ids=["greedy", "sampled"])
@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_a_round_copies_to_the_host_once_and_reads_nothing_else(kind, sampling, shared_pair, cross_pair):
    """The drafts, the base's pass, every position's decision and the draws stay on the device; the host
    reads them in one copy per round (as a step does), never a value on its own."""
    from test_step_discipline import counted_steps

    from blendin.speculation import SpeculativeBatch

    pair = shared_pair if kind == "shared" else cross_pair
    decoder = pair.decoder({"name": "blendin"}, sampling=sampling, speculate=3)
    with counted_steps(SpeculativeBatch) as (counts, reads):
        decoder.generate(PROMPTS8, max_new_tokens=MAX_NEW, batch_size=3, stop_strings=["e"])
    assert counts and reads["n"] == 0, sorted(set(reads["where"]))
    assert all(syncs == 1 for syncs, _ in counts), counts


def test_speculate_is_refused_where_it_cannot_work(shared_pair):
    with pytest.raises(ConfigError, match="cannot speculate"):
        shared_pair.decoder({"name": "nudging_words"}, speculate=2)
    with pytest.raises(ConfigError, match="cannot speculate"):
        shared_pair.decoder({"name": "guidance"}, speculate=2)
    with pytest.raises(ConfigError, match="speculate=-1"):
        shared_pair.decoder({"name": "nudging"}, speculate=-1)
    with pytest.raises(ConfigError, match="base_view=ids"):
        shared_pair.decoder({"name": "nudging"}, speculate=2, base_view="text")


# ---- sampling: the same distribution as step by step ---------------------------------------------

SAMPLED = [{"name": "base"}, {"name": "nudging", "tau": 1.0}, {"name": "blendin", "tau": 1.0, "top_k": 5}]


def _drawn(pair, method, prompt, n: int, sampling: Sampling, speculate: int, tokens: int = 1) -> Counter:
    decoder = pair.decoder(method, sampling=sampling, speculate=speculate)
    keys = [stream_key(sampling.seed, "item", k) for k in range(n)]
    outs = decoder.generate([prompt] * n, max_new_tokens=tokens, batch_size=256, keys=keys)
    if tokens == 1:  # as tests/test_sampling.py keys them: a mapped token by its id, a spelled one by its ids
        return Counter((o.trace["chosen_id"][0],) if o.trace["chosen_id"][0] >= 0 else tuple(o.token_ids) for o in outs)
    return Counter(tuple(o.token_ids[:tokens]) for o in outs)


@pytest.mark.parametrize("kind", ["shared", "cross"])
@pytest.mark.parametrize("method", SAMPLED, ids=lambda m: m["name"])
def test_speculative_first_tokens_fit_the_methods_distribution(request, kind, method):
    """The first token goes through the draft's accept/reject and the residual draw."""
    pair = request.getfixturevalue(f"{kind}_pair")
    prompt = Prompt("Question: What is 12 plus 30?")
    counts = _drawn(pair, method, prompt, 2000, Sampling(temperature=0.8, seed=5), speculate=3)
    assert chi_square_p(counts, expected(pair, method, prompt, 0.8)) > 1e-3
    other = {"name": "base"} if method["name"] != "base" else {"name": "nudging", "tau": 1.0}
    assert chi_square_p(counts, _padded(expected(pair, other, prompt, 0.8), counts)) < 1e-6


@pytest.mark.parametrize("method", SAMPLED[1:], ids=lambda m: m["name"])
def test_speculative_continuations_fit_step_by_step_sampling(method, shared_pair):
    """The first two tokens (the second drawn after a kept or a rejected draft) against step-by-step
    sampling's, as a two-sample test; and, as a negative control, against the base's."""
    prompt = Prompt("Question: What is 12 plus 30?")
    sampling = Sampling(temperature=0.8, seed=7)
    fast = _drawn(shared_pair, method, prompt, 1500, sampling, speculate=3, tokens=2)
    plain = _drawn(shared_pair, method, prompt, 1500, Sampling(temperature=0.8, seed=8), speculate=0, tokens=2)
    base = _drawn(shared_pair, {"name": "base"}, prompt, 1500, Sampling(temperature=0.8, seed=9), 0, tokens=2)

    def p_value(a: Counter, b: Counter) -> float:
        common = [key for key in set(a) | set(b) if a[key] + b[key] >= 10]
        rest = [sum(c.values()) - sum(c[key] for key in common) for c in (a, b)]
        return float(
            chi2_contingency([[a[key] for key in common] + [rest[0]], [b[key] for key in common] + [rest[1]]]).pvalue
        )

    assert p_value(fast, plain) > 1e-3
    assert p_value(fast, base) < 1e-6


def test_speculative_draws_do_not_depend_on_the_batch(cross_pair):
    sampling = Sampling(temperature=1.0, top_p=0.95, seed=4)
    keys = [stream_key(4, str(i), 0) for i in range(len(PROMPTS8))]
    decoder = cross_pair.decoder({"name": "blendin", "tau": 0.6}, sampling=sampling, speculate=4)
    one = [decoder.generate([p], max_new_tokens=MAX_NEW, batch_size=1, keys=[k])[0] for p, k in zip(PROMPTS8, keys)]
    batched = decoder.generate(PROMPTS8, max_new_tokens=MAX_NEW, batch_size=4, keys=keys)
    assert [o.token_ids for o in one] == [o.token_ids for o in batched]
    assert all(p == p for o in batched for p in o.trace["sample_prob"])  # every token was drawn


@pytest.mark.real
@pytest.mark.parametrize(
    "method, batch_size",  # each batch size once: the tiny pairs above cover every method at both
    [({"name": "base"}, 3), ({"name": "nudging"}, 1), ({"name": "blendin"}, 3)],
    ids=["base-b3", "nudging-b1", "blendin-b3"],
)
def test_speculative_decoding_of_the_embedded_pair_equals_step_by_step(method, batch_size, real_pair):
    prompts = [Prompt(q) for q in ("Question: What is 12 times 7?", "Write a haiku about rain.", "Name three rivers.")]
    _compare(real_pair, method, 4, batch_size, prompts=prompts, max_new=24, stop=("\nQuestion:",))


def test_no_two_tokens_of_a_pass_write_one_column(cross_pair, monkeypatch):
    """In the base's pass over new tokens and drafts, rows that read fewer new tokens pad the chunk:
    the padding must write past the drafts, never onto their columns (two writes to one column in
    one pass have no defined winner on a GPU). Rows joining a running batch read none."""
    from blendin import streams

    forward = streams.CachedStream._forward
    seen = []

    def checked(self, ids, columns, width, keep, first=0):
        for row in columns.tolist():
            assert len(set(row)) == len(row), row
        seen.append(ids.shape[1])
        return forward(self, ids, columns, width, keep, first)

    monkeypatch.setattr(streams.CachedStream, "_forward", checked)
    cross_pair.decoder({"name": "nudging"}, speculate=3).generate(
        PROMPTS8, max_new_tokens=MAX_NEW, batch_size=3, stop_strings=["e"]
    )
    assert max(seen) > 3, "some pass read new tokens and drafts together"
