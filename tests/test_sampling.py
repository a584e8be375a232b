"""Seeded sampling (`blendin.sampling`): each method's distribution, checked against an independent
computation written here; the random stream of an output depends only on (seed, sample id, index, step)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from blendin.benchmarks import majority, pass_at_k, repeated
from blendin.errors import ConfigError
from blendin.prompts import Prompt
from blendin.sampling import Sampling, draw, sampling_from, stream_key, uniforms

MASK = (1 << 64) - 1


def splitmix64(key: int, step: int) -> float:
    """The reference: splitmix64 in Python's unbounded integers, masked to 64 bits."""
    x = (key + (step + 1) * 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    x ^= x >> 31
    return (x >> 11) / float(1 << 53)


def test_uniforms_are_splitmix64_of_key_and_step():
    keys = [stream_key(seed, sid, k) for seed in (0, 7) for sid in ("gsm8k-1", "x") for k in (0, 3)]
    steps = [0, 1, 5, 1000]
    got = uniforms(torch.tensor(keys).repeat_interleave(len(steps)), torch.tensor(steps * len(keys)))
    want = [splitmix64(k & MASK, s) for k in keys for s in steps]
    assert got.tolist() == pytest.approx(want, abs=0)
    assert 0 <= min(want) and max(want) < 1 and len(set(want)) == len(want)


def token_of(prob: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Which entry of `dist` each reported probability is (the nearest)."""
    return (prob.double().unsqueeze(-1) - dist.double()).abs().argmin(-1)


def test_draw_tempers_and_filters_the_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    u = uniforms(torch.arange(20000), torch.zeros(20000, dtype=torch.long))
    rows = probs.expand(20000, 4)

    def frequencies(sampling):
        token, prob, plain = draw(rows, u, sampling)
        assert plain.tolist() == pytest.approx(probs[0][token].tolist())  # untempered: the input's own
        return torch.bincount(token, minlength=4).double() / len(u), prob

    tempered = probs[0] ** 2 / (probs[0] ** 2).sum()  # T = 0.5
    freq, prob = frequencies(Sampling(temperature=0.5))
    assert freq.tolist() == pytest.approx(tempered.tolist(), abs=0.01)
    assert prob.tolist() == pytest.approx(tempered[token_of(prob, tempered)].tolist(), rel=1e-5)
    freq, _ = frequencies(Sampling(temperature=1.0, top_p=0.75))  # {0.5, 0.3}: the smallest set reaching 0.75
    assert freq.tolist() == pytest.approx([0.625, 0.375, 0, 0], abs=0.01)
    freq, _ = frequencies(Sampling(temperature=1.0, top_k=3))
    assert freq.tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], abs=0.01)


def test_a_token_written_by_two_columns_has_their_joint_mass():
    """Two guidance tokens with one base twin: the drawn token's probability counts both columns."""
    probs = torch.tensor([[0.1, 0.3, 0.2, 0.4]]).expand(1000, 4)
    ids = torch.tensor([[7, 5, 5, 9]]).expand(1000, 4)
    u = uniforms(torch.arange(1000), torch.zeros(1000, dtype=torch.long))
    token, prob, plain = draw(probs, u, Sampling(temperature=1.0), ids)
    want = {7: 0.1, 5: 0.5, 9: 0.4}
    assert set(token.tolist()) == set(want)
    assert prob.tolist() == pytest.approx([want[t] for t in token.tolist()])
    assert plain.tolist() == pytest.approx([want[t] for t in token.tolist()])
    # top-k keeps columns, not tokens: k = 2 keeps 0.4 and 0.3, so token 5 has 0.3 of 0.7
    token, prob, _ = draw(probs, u, Sampling(temperature=1.0, top_k=2), ids)
    assert set(token.tolist()) == {5, 9} and prob.tolist() == pytest.approx(
        [{5: 3 / 7, 9: 4 / 7}[t] for t in token.tolist()]
    )


def test_a_draw_at_the_very_top_of_the_range_lands_on_a_kept_token():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    for sampling in (
        Sampling(temperature=1.0),
        Sampling(temperature=0.7, top_p=0.5),
        Sampling(temperature=1.0, top_k=2),
    ):
        token, prob, _ = draw(probs, torch.tensor([1 - 2**-53]), sampling)
        assert prob.item() > 0, sampling


# ---- each method's distribution, against an independent computation --------------------------------


def _next_token_probs(loaded, prompt) -> torch.Tensor:
    ids = torch.tensor([loaded.prompt_ids(prompt)])
    with torch.no_grad():
        return torch.softmax(loaded.model(ids).logits[0, -1].float(), -1)


def expected(pair, method: dict, prompt, temperature: float) -> dict[tuple, float]:
    """The method's next-token distribution, keyed by the base ids it writes (a guidance token
    without a base twin: its spelling), computed from the two models' own forward passes."""
    base, guidance, vocab = pair.model("base"), pair.model("guidance"), pair.vocab
    pb = _next_token_probs(base, prompt)
    pg = _next_token_probs(guidance, prompt)

    def spelling(g: int) -> tuple:
        twin = int(vocab.guidance_to_base[g])
        return (twin,) if twin >= 0 else tuple(vocab.base_ids_for_guidance_token(g))

    dist: Counter = Counter()
    if method["name"] == "base":
        dist.update({(b,): float(p) for b, p in enumerate(pb)})
    elif method["name"] == "nudging":  # tau = 1: the guidance's distribution at every step
        for g, p in enumerate(pg):
            dist[spelling(g)] += float(p)
    else:  # blendin over the union of both top-k lists (the reference's rule)
        k = method["top_k"]
        base_top = pb.topk(k)
        guide_top = pg.topk(k)
        in_base = {int(b): float(p) for p, b in zip(base_top.values, base_top.indices)}
        in_guide: Counter = Counter()
        for p, g in zip(guide_top.values, guide_top.indices):
            in_guide[spelling(int(g))] += float(p)
        top_g = spelling(int(guide_top.indices[0]))
        pb_tg = in_base.get(top_g[0], 0.0) if len(top_g) == 1 else 0.0
        p_b, p_g = float(base_top.values[0]), float(guide_top.values[0])
        alpha = min(1.0, max(0.0, p_g / (p_b + p_g) + 0.1 * pb_tg))
        for key in {(b,) for b in in_base} | set(in_guide):
            from_base = in_base.get(key[0], 0.0) if len(key) == 1 else 0.0
            dist[key] = alpha * in_guide.get(key, 0.0) + (1 - alpha) * from_base
    weights = {key: p ** (1 / temperature) for key, p in dist.items() if p > 0}
    total = sum(weights.values())
    return {key: w / total for key, w in weights.items()}


def sampled(pair, method: dict, prompt, n: int, sampling: Sampling) -> Counter:
    """n first tokens of `prompt`, each with its own random stream."""
    decoder = pair.decoder(method, sampling=sampling)
    keys = [stream_key(sampling.seed, "item", k) for k in range(n)]
    outs = decoder.generate([prompt] * n, max_new_tokens=1, batch_size=256, keys=keys)
    # a mapped token by its id (EOS writes no id), a spelled guidance token by the base ids it wrote
    return Counter((o.trace["chosen_id"][0],) if o.trace["chosen_id"][0] >= 0 else tuple(o.token_ids) for o in outs)


def chi_square_p(counts: Counter, dist: dict) -> float:
    """Goodness of fit, bins with an expected count under 5 pooled into one."""
    n = sum(counts.values())
    assert set(counts) <= set(dist), f"drawn outside the distribution: {set(counts) - set(dist)}"
    big = [key for key, p in dist.items() if p * n >= 5]
    observed = [counts[key] for key in big] + [n - sum(counts[key] for key in big)]
    wanted = [dist[key] * n for key in big] + [n - sum(dist[key] * n for key in big)]
    if wanted[-1] < 1e-9:
        observed, wanted = observed[:-1], wanted[:-1]
    return float(chisquare(observed, wanted).pvalue)


METHODS = [
    {"name": "base"},
    {"name": "nudging", "tau": 1.0},
    {"name": "blendin", "tau": 1.0, "top_k": 5},
]


@pytest.mark.parametrize("kind", ["shared", "cross"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["name"])
def test_empirical_token_frequencies_match_the_methods_distribution(request, kind, method):
    pair = request.getfixturevalue(f"{kind}_pair")
    prompt = Prompt("Question: What is 12 plus 30?")
    sampling = Sampling(temperature=0.8, seed=3)
    counts = sampled(pair, method, prompt, 2000, sampling)
    assert chi_square_p(counts, expected(pair, method, prompt, 0.8)) > 1e-3
    # the test can fail: the same draws are far from another method's distribution
    other = {"name": "base"} if method["name"] != "base" else {"name": "nudging", "tau": 1.0}
    assert chi_square_p(counts, _padded(expected(pair, other, prompt, 0.8), counts)) < 1e-6


def _padded(dist: dict, counts: Counter) -> dict:
    """`dist` with a tiny mass on draws it does not hold (so the fit is defined, and fails)."""
    extra = {key: 1e-9 for key in counts if key not in dist}
    total = 1 + sum(extra.values())
    return {key: p / total for key, p in {**dist, **extra}.items()}


def test_temperature_zero_is_todays_greedy_output_for_every_method(cross_pair):
    from blendin.methods import REGISTRY

    prompts = [Prompt("Question: What is 12 plus 30?"), Prompt("Write a poem about the sea.")]
    for name, spec in REGISTRY.items():
        if not spec.decodes or set(spec.roles) - {"base", "guidance"}:  # a model the tiny pair does not name
            continue
        method = {"name": name, "tau": 0.6} if "tau" in spec.params else {"name": name}
        greedy = [g.text for g in cross_pair.decoder(method).generate(prompts, max_new_tokens=12)]
        zero = [g.text for g in cross_pair.decoder(method, sampling=Sampling()).generate(prompts, max_new_tokens=12)]
        assert zero == greedy, name


def test_sampled_outputs_carry_the_drawn_tokens_probabilities(cross_pair):
    out = cross_pair.decoder({"name": "blendin", "tau": 0.6}, sampling=Sampling(temperature=1.0, seed=1)).generate(
        [Prompt("Write a poem about the sea.")], max_new_tokens=16
    )[0]
    probs = out.trace["sample_prob"]
    assert len(probs) == out.n_tokens and all(0 < p <= 1 for p in probs)
    greedy = cross_pair.decoder({"name": "blendin", "tau": 0.6}).generate([Prompt("Write a poem.")], max_new_tokens=4)
    assert all(p != p for p in greedy[0].trace["sample_prob"])  # NaN: nothing was sampled


# ---- runs: the same outputs whatever the batch, after a resume; another seed differs -----------------


def _run(model_dirs, tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from blendin.run import execute, run_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(
            config_name="config",
            overrides=[
                "pair.name=tiny_cross",
                f"pair.base.source={model_dirs['cross_base']}",
                f"pair.guidance.source={model_dirs['cross_guidance']}",
                "device=cpu",
                f"results_dir={tmp_path}",
                "benchmark=gsm8k",
                "benchmark.n=3",
                "benchmark.max_new_tokens=10",
                "method=blendin",
                "method.tau=0.6",
                "decoding=sample",
                "decoding.samples=3",
                "decoding.temperature=1.0",
                *overrides,
            ],
        )
    metrics = execute(cfg)
    return run_dir(cfg), metrics


def _outputs(run: Path) -> list:
    return [
        (r["id"], r["sample"], r["output"]) for r in map(json.loads, (run / "samples.jsonl").read_text().splitlines())
    ]


@pytest.mark.skipif(
    not __import__("blendin.data", fromlist=["data_dir"]).data_dir().exists(), reason="no benchmark data"
)
def test_outputs_do_not_depend_on_batch_or_resuming_and_change_with_the_seed(model_dirs, tmp_path):
    import pandas as pd

    one, metrics = _run(model_dirs, tmp_path / "b1", "batch_size=1")
    eight, _ = _run(model_dirs, tmp_path / "b8", "batch_size=8")
    assert _outputs(one) == _outputs(eight)
    assert len(_outputs(one)) == 9 and len({o for _, _, o in _outputs(one)}) > 3  # the samples differ
    assert metrics["samples_per_item"] == 3 and metrics["n_samples"] == 3
    assert set(metrics["pass_at_k"]) == {"1", "2", "3"} and "majority_score" in metrics
    trace = pd.read_parquet(one / "tokens.parquet")
    assert trace.groupby(["sample_id", "sample"]).size().tolist() == [
        r["n_tokens"] for r in map(json.loads, (one / "samples.jsonl").read_text().splitlines())
    ]

    # killed after 4 outputs: the resumed run gives the same 9 outputs and the same trace
    killed = tmp_path / "killed"
    run, _ = _run(model_dirs, killed, "batch_size=2")
    lines = (run / "samples.jsonl").read_text().splitlines()
    (run / "samples.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (run / "metrics.json").unlink()
    (run / "tokens.parquet").unlink()
    run, _ = _run(model_dirs, killed, "batch_size=2")
    assert sorted(_outputs(run)) == sorted(_outputs(one))

    other, _ = _run(model_dirs, tmp_path / "seed", "decoding.seed=1")
    assert other.name != one.name and _outputs(other) != _outputs(one)


def test_decoding_settings_are_checked_with_the_fix_named():
    with pytest.raises(ConfigError, match="decoding.samples=3 needs decoding.temperature > 0"):
        sampling_from({"samples": 3})
    with pytest.raises(ConfigError, match=r"decoding.top_p=1.5 must be in \(0, 1\]"):
        sampling_from({"temperature": 1.0, "top_p": 1.5})
    with pytest.raises(ConfigError, match="decoding has no setting colour"):
        sampling_from({"colour": 1})
    from blendin.checks import check_decoding

    with pytest.raises(ConfigError, match="method nudging_words decodes greedily only"):
        check_decoding({"temperature": 0.7}, "nudging_words")


def test_a_greedy_only_method_refuses_a_sampling_decoder(cross_pair):
    with pytest.raises(ConfigError, match="method nudging_words decodes greedily only"):
        cross_pair.decoder({"name": "nudging_words"}, sampling=Sampling(temperature=0.7))


def test_pass_at_k_and_majority_vote():
    import itertools

    # pass@k against brute force: the share of k-subsets holding a right answer
    for n, c, k in [(5, 2, 1), (5, 2, 3), (6, 0, 2), (4, 4, 2), (7, 3, 7)]:
        right = [1] * c + [0] * (n - c)
        subsets = list(itertools.combinations(right, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    group = [
        {"id": "a", "sample": 0, "prediction": "3", "score": 0.0},
        {"id": "a", "sample": 1, "prediction": "4", "score": 1.0},
        {"id": "a", "sample": 2, "prediction": "4", "score": 1.0},
        {"id": "a", "sample": 3, "prediction": None, "score": 0.0},
    ]
    assert majority(group)["prediction"] == "4"
    tie = [dict(group[0]), dict(group[1])]
    assert majority(tie)["prediction"] == "3"  # a tie goes to the earliest sample
    summary = repeated(group + [{**g, "id": "b", "score": 0.0, "prediction": "9"} for g in group])
    assert summary["majority_score"] == 0.5 and summary["pass_at_k"]["1"] == pytest.approx(0.25)


# ---- the store keys outputs on (sample id, sample index) ---------------------------------------------


def test_the_store_keeps_traces_across_old_parts_rescoring_and_torn_batches(tmp_path):
    import pandas as pd

    from blendin.store import RunStore

    store = RunStore(tmp_path / "run")
    store.parts.mkdir(parents=True)
    # a part written before outputs had an index (a run killed before this version, then resumed)
    pd.DataFrame({"sample_id": ["a", "a"], "step": [0, 1]}).to_parquet(store.parts / "tokens-a.parquet")
    store.append(
        [{"id": "b", "sample": 0}, {"id": "b", "sample": 1}],
        {"sample_id": ["b", "b"], "sample": [0, 1], "step": [0, 0]},
    )
    # a batch whose sample lines were torn after one line: the other output's trace rows go
    store.append([{"id": "c", "sample": 0}], {"sample_id": ["c", "c"], "sample": [0, 1], "step": [0, 0]})
    done = {("a", 0), ("b", 0), ("b", 1), ("c", 0)}
    store.prune_parts(done)
    records = [{"id": "a", "sample": 0}, {"id": "b", "sample": 0}, {"id": "b", "sample": 1}, {"id": "c", "sample": 0}]
    store.finalize(records, {"score": 1})
    trace = pd.read_parquet(store.path / "tokens.parquet")
    assert list(zip(trace["sample_id"], trace["sample"], trace["step"])) == [
        ("a", 0, 0), ("a", 0, 1), ("b", 0, 0), ("b", 1, 0), ("c", 0, 0)
    ]  # fmt: skip
    store.finalize(records, {"score": 0.5})  # rescoring a finished run keeps its trace
    assert pd.read_parquet(store.path / "tokens.parquet").equals(trace)
