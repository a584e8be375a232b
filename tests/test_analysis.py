"""The analysis package (src/analysis/) on synthetic results stores with known answers.

Statistics are checked against scipy and hand computations, artefacts against the numbers the
synthetic store was built from (tests/synthetic_store.py), and every command end to end on a
synthetic store and on an empty results folder.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from synthetic_store import RATES, binary, build_store, write_run

from analysis import heatmap, overlap, paper, paradox, report, select, stats, subset, tables
from analysis.load import load_runs, load_tokens, sample_scores, unfinished_runs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def frame(store) -> pd.DataFrame:
    return load_runs(store)


# ---- statistics -----------------------------------------------------------------------------------


def test_correlation_equals_scipy():
    rng = np.random.default_rng(1)
    x = rng.random(12)
    y = -0.8 * x + rng.normal(0, 0.2, 12)
    got = stats.correlation(x, y)
    pearson = sps.pearsonr(x, y)
    ci = pearson.confidence_interval(0.95)  # scipy's interval is Fisher's z too
    spearman = sps.spearmanr(x, y)
    assert got["pearson_r"] == pytest.approx(pearson.statistic, abs=1e-12)
    assert got["pearson_p"] == pytest.approx(pearson.pvalue, rel=1e-9)
    assert (got["r_ci95_low"], got["r_ci95_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert got["spearman_rho"] == pytest.approx(spearman.statistic, abs=1e-12)
    assert got["spearman_p"] == pytest.approx(spearman.pvalue, rel=1e-9)


def test_fisher_interval_by_hand():
    # atanh(0.5) = 0.549306, half-width 1.959964 / sqrt(28 - 3)
    low, high = stats.fisher_ci(0.5, 28)
    assert low == pytest.approx(math.tanh(0.5493061443 - 1.959963985 / 5), abs=1e-9)
    assert high == pytest.approx(math.tanh(0.5493061443 + 1.959963985 / 5), abs=1e-9)
    assert all(math.isnan(v) for v in stats.fisher_ci(0.5, 3))


def _abs_r_against(x):
    """|Pearson r| of x against each resampled y (scipy's vectorized statistic over the last axis)."""

    def statistic(y, axis=-1):
        xc, yc = x - x.mean(), y - y.mean(axis=axis, keepdims=True)
        return np.abs((yc * xc).sum(axis=axis) / np.sqrt((xc**2).sum() * (yc**2).sum(axis=axis)))

    return statistic


def test_exact_permutation_p_equals_scipy():
    x = np.array([0.10, 0.15, 0.22, 0.30, 0.41, 0.18])
    y = np.array([0.70, 0.61, 0.66, 0.48, 0.35, 0.52])
    # one sample with permutation_type 'pairings' permutes y alone: all 6! pairings, exactly
    reference = sps.permutation_test(
        (y,), _abs_r_against(x), vectorized=True, permutation_type="pairings", alternative="greater", n_resamples=np.inf
    )
    assert stats.permutation_p(x, y) == pytest.approx(reference.pvalue, abs=1e-12)
    assert stats.permutation_p(x, y) < 0.05  # a strong negative relation is rare among 720 pairings


def test_random_permutation_p_close_to_scipy():
    rng = np.random.default_rng(3)
    x = rng.random(15)
    y = 0.3 * x + rng.normal(0, 0.3, 15)
    reference = sps.permutation_test(
        (y,),
        _abs_r_against(x),
        vectorized=True,
        permutation_type="pairings",
        alternative="greater",
        n_resamples=20_000,
        random_state=0,
    )
    assert stats.permutation_p(x, y, 10_000, seed=0) == pytest.approx(reference.pvalue, abs=0.03)
    assert stats.permutation_p(x, y, 10_000, seed=0) == stats.permutation_p(x, y, 10_000, seed=0)


def test_no_fit_with_fewer_than_three_points():
    got = stats.correlation([0.1, 0.2], [0.5, 0.4])
    assert got["n_points"] == 2 and math.isnan(got["pearson_r"]) and math.isnan(got["permutation_p"])


def test_mcnemar_exact_by_hand():
    # 3 both right, 1 only a right, 6 only b right, 2 both wrong: discordant 7, the smaller side 1
    a = [1] * 3 + [1] + [0] * 6 + [0] * 2
    b = [1] * 3 + [0] + [1] * 6 + [0] * 2
    hand = 2 * (math.comb(7, 0) + math.comb(7, 1)) / 2**7  # two-sided binomial, p = 1/2
    result = stats.mcnemar_exact(a, b)
    assert (result["n01"], result["n10"]) == (6, 1)
    assert result["p"] == pytest.approx(hand) == pytest.approx(0.125)
    assert stats.mcnemar_exact(b, a)["p"] == pytest.approx(hand)
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1])["p"] == 1.0
    test = stats.paired_test(a, b)
    assert test["test"] == "exact McNemar" and test["diff"] == pytest.approx(5 / 12)
    assert test["p"] == pytest.approx(hand)


def test_paired_bootstrap_sign_and_interval():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 6, 200).astype(float)  # 1-5 judge scores: not binary, so the bootstrap is used
    better = np.clip(a + rng.choice([0, 1], 200, p=[0.6, 0.4]), 1, 5)
    up, down = stats.paired_test(a, better), stats.paired_test(better, a)
    assert up["test"] == "paired bootstrap"
    assert up["diff"] > 0 and up["p"] < 0.01 and down["diff"] == pytest.approx(-up["diff"])
    boot = stats.paired_bootstrap(a, better)
    assert 0 < boot["ci_low"] < boot["diff"] < boot["ci_high"]
    assert stats.paired_bootstrap(a, a)["p"] == 1.0


def test_wald_and_bootstrap_intervals():
    values = np.array([1.0] * 120 + [0.0] * 280)  # p = 0.3, n = 400
    half = 1.959963985 * math.sqrt(0.3 * 0.7 / 400)
    assert stats.wald_ci(values) == pytest.approx((0.3 - half, 0.3 + half), abs=1e-9)
    low, high = stats.bootstrap_ci(values, 4000)
    assert low == pytest.approx(0.3 - half, abs=0.01) and high == pytest.approx(0.3 + half, abs=0.01)
    assert stats.wald_ci([1.0] * 10) == (1.0, 1.0)  # clipped to [0, 1]
    with pytest.raises(ValueError, match="wald"):
        stats.mean_ci(values, "normal")


def test_minimum_detectable_difference():
    d = stats.mdd_paired_binary(100, 0.3)
    za, zb = 1.959963985, 0.841621234
    assert (za * math.sqrt(0.3) + zb * math.sqrt(0.3 - d * d)) ** 2 / d**2 == pytest.approx(100, rel=1e-6)
    assert stats.mdd_paired_binary(400, 0.3) < d < stats.mdd_paired_binary(25, 0.3)
    assert 0 < stats.mdd_paired_binary(100, 0.0) < 0.2  # identical runs: discordance taken as d itself
    assert stats.mdd_paired_continuous(100, 1.0) == pytest.approx((za + zb) / 10, rel=1e-6)


# ---- the loader -----------------------------------------------------------------------------------


def test_loader_defaults_for_old_runs(frame):
    assert len(frame) > 50
    assert set(frame["protocol"]) == {"ours"} and set(frame["split"]) == {"test"}
    assert set(frame["intervention_unit"]) == {"token"}
    full = frame[frame["n_spec"] == "full"]
    assert len(full) == 1 and full["n_samples"].iloc[0] == 60
    assert set(frame[frame["n_spec"] != "full"]["n_spec"]) == {"20"}
    q = frame[(frame["pair"] == "qwen1.7b_llama8b") & (frame["method"] == "nudging") & (frame["n_spec"] == "20")]
    assert q["pair_label"].iloc[0] == "Q-3 1.7B→L-3 8B"
    assert '"\\n\\nQuestion:"' in q[q["benchmark"] == "gsm8k"]["setting"].iloc[0]


def test_protocol_settings_group_runs(tmp_path):
    def protocol(name, view, unit):
        return {
            "name": name,
            "stop_strings": ["\n\nQuestion:"],
            "max_new_tokens": 64,
            "subset_rule": "seeded",
            "split": "test",
            "base_view": view,
            "intervention_unit": unit,
            "judge": None,
        }

    write_run(tmp_path, "a_b", "gsm8k", "base", [1.0, 0.0], protocol=protocol("ours", "ids", "token"))
    write_run(
        tmp_path,
        "a_b",
        "gsm8k",
        "nudging_words",
        [1.0, 1.0],
        rate=0.3,
        unit="word",
        protocol=protocol("ours", "text", "word"),
    )
    write_run(tmp_path, "a_b", "gsm8k", "base", [0.0, 0.0], protocol=protocol("reference", "text", "token"))
    runs = load_runs(tmp_path).set_index(["method", "protocol"])
    ours_base, words = runs.loc[("base", "ours")], runs.loc[("nudging_words", "ours")]
    assert ours_base["setting_key"] == words["setting_key"]  # base_view and unit belong to the method
    assert words["intervention_unit"] == "word"
    assert runs.loc[("base", "reference"), "setting_key"] != ours_base["setting_key"]
    assert "protocol=reference(subset_rule=seeded)" in runs.loc[("base", "reference"), "setting"]
    points = paradox.compute_points(load_runs(tmp_path))
    assert points["base_score"].tolist() == [0.5]  # the base run of the same (ours) setting, not the reference one


def test_justeval_without_judge_is_left_out(frame, store):
    je = frame[frame["benchmark"] == "justeval_safe"]
    assert len(je) == 4 and je["score"].isna().all()
    assert je[je["method"] == "base"]["stored_score"].notna().all()  # it stored a refusal rate...
    assert je["score_excluded"].str.contains("without an LLM judge").all()  # ...which is never used
    assert sample_scores(je.iloc[0]).isna().all()
    notes: list[str] = []
    cells = heatmap.compute(frame, notes=notes)
    assert cells[cells["benchmark"] == "justeval_safe"]["delta"].isna().all()
    assert any("without an LLM judge" in n for n in notes)
    assert "justeval_safe" not in set(paradox.compute_points(frame)["benchmark"])
    assert "justeval_safe" not in set(tables.table1(frame, n_boot=200)[0]["benchmark"])


def test_justeval_with_a_judge_is_kept(tmp_path):
    for pair, gap in (("a_b", 1.0), ("c_d", 2.0)):
        write_run(tmp_path, pair, "justeval_safe", "base", [2.0] * 10, judge="openai")
        write_run(tmp_path, pair, "justeval_safe", "nudging", [2.0 + gap] * 10, judge="openai", rate=0.2)
    cells = heatmap.compute(load_runs(tmp_path))
    je = cells[cells["benchmark"] == "justeval_safe"].set_index("pair")
    assert je.loc["a_b", "delta"] == pytest.approx(1.0) and je.loc["c_d", "delta"] == pytest.approx(2.0)


def test_tokens_of_old_runs_get_the_new_columns(frame):
    run = frame[(frame["method"] == "probe")].iloc[0]
    trace = load_tokens(run)
    assert {"guide_top_spelled", "base_top_p_size", "top100_overlap", "text_offset"} <= set(trace.columns)
    assert (trace["base_top_p_size"] == -1).all() and trace["top100_overlap"].isna().all()
    assert list(load_tokens(run, ["sample_id", "top100_overlap"]).columns) == ["sample_id", "top100_overlap"]


def test_unfinished_runs_are_ignored(tmp_path):
    write_run(tmp_path, "a_b", "gsm8k", "base", [1.0, 0.0])
    partial = tmp_path / "runs" / "a_b" / "gsm8k" / "nudging-partial"
    partial.mkdir(parents=True)
    (partial / "config.yaml").write_text("method: {name: nudging}\n")
    assert len(load_runs(tmp_path)) == 1 and unfinished_runs(tmp_path) == [str(partial)]


def test_empty_results_folder_loads(tmp_path):
    empty = load_runs(tmp_path / "nothing-here")
    assert empty.empty and "setting_key" in empty.columns


# ---- Figure 3 -------------------------------------------------------------------------------------


def test_paradox_known_answer(frame):
    notes: list[str] = []
    points = paradox.compute_points(frame, notes=notes)
    fits = paradox.compute(frame, points=points)
    assert list(points.columns[:8]) == [
        "pair",
        "benchmark",
        "method",
        "tau",
        "intervention_rate",
        "score",
        "base_score",
        "run_dir",
    ]
    assert list(fits.columns) == [
        "benchmark",
        "method",
        "unit",
        "n_points",
        "pearson_r",
        "pearson_p",
        "r_ci95_low",
        "r_ci95_high",
        "spearman_rho",
        "spearman_p",
        "permutation_p",
    ]
    gsm = points[points["benchmark"] == "gsm8k"].set_index("pair")
    assert len(gsm) == len(RATES)  # the full-set twin of Q→L is another setting: left out, not a 6th point
    for pair, rate in RATES.items():
        assert gsm.loc[pair, "score"] == pytest.approx(0.8 - rate)
        assert gsm.loc[pair, "base_score"] == pytest.approx(0.2)
        assert gsm.loc[pair, "guidance_score"] == pytest.approx(0.5)
    row = fits[fits["benchmark"] == "gsm8k"].iloc[0]
    assert row["n_points"] == 5 and row["pearson_r"] == pytest.approx(-1.0) and row["unit"] == "token"
    assert any("n=full" in n and "left out" in n for n in notes)


def test_paradox_points_carry_their_interval(frame):
    points = paradox.compute_points(frame)
    assert (points["ci_low"] <= points["score"]).all() and (points["score"] <= points["ci_high"]).all()
    assert (points["n"] == 20).all()


def test_paradox_fit_equals_scipy_on_the_same_points():
    rng = np.random.default_rng(7)
    rates = rng.uniform(0.05, 0.4, 9)
    scores = 0.9 - rates + rng.normal(0, 0.08, 9)
    points = pd.DataFrame(
        {
            "pair": [f"p{i}" for i in range(9)],
            "benchmark": "gsm8k",
            "method": "nudging",
            "tau": 0.4,
            "intervention_rate": rates,
            "score": scores,
            "base_score": np.nan,
            "run_dir": "",
            "unit": "token",
            "guidance_score": np.nan,
            "setting": "s",
        }
    )
    row = paradox.compute(None, points=points).iloc[0]
    ref = sps.pearsonr(rates, scores)
    assert row["pearson_r"] == pytest.approx(ref.statistic) and row["pearson_p"] == pytest.approx(ref.pvalue)
    assert (row["r_ci95_low"], row["r_ci95_high"]) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert row["spearman_rho"] == pytest.approx(sps.spearmanr(rates, scores).statistic)


def test_paradox_refuses_a_unit_mix_and_splits_units(tmp_path):
    mixed = pd.DataFrame(
        {
            "intervention_rate": [0.1, 0.2, 0.3, 0.4],
            "score": [0.5, 0.4, 0.3, 0.2],
            "unit": ["token", "token", "word", "word"],
        }
    )
    with pytest.raises(select.UnitMixError, match=r"token, word.*not comparable"):
        paradox.fit(mixed)
    for i, pair in enumerate(["a_b", "c_d", "e_f"]):
        write_run(tmp_path, pair, "gsm8k", "nudging", binary(0.7 - 0.1 * i, 10), rate=0.1 + 0.1 * i)
        write_run(tmp_path, pair, "gsm8k", "nudging_words", binary(0.6 - 0.1 * i, 10), rate=0.2 + 0.1 * i, unit="word")
    assert paradox.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    fits = pd.read_csv(tmp_path / "out" / "paradox.csv")
    assert sorted(zip(fits["method"], fits["unit"])) == [("nudging", "token"), ("nudging_words", "word")]
    assert (fits["n_points"] == 3).all()
    assert (tmp_path / "out" / "figure3.png").is_file() and (tmp_path / "out" / "figure3_nudging_words.png").is_file()
    points = pd.read_csv(tmp_path / "out" / "paradox_points.csv")
    assert set(points["unit"]) == {"token", "word"}
    with pytest.raises(select.UnitMixError):
        tables.select.require_one_unit(points["unit"], "one column")


def test_paradox_with_two_points_has_no_fit(tmp_path):
    for i, pair in enumerate(["a_b", "c_d"]):
        write_run(tmp_path, pair, "gsm8k", "nudging", binary(0.5, 10), rate=0.1 * (i + 1))
    notes: list[str] = []
    fits = paradox.compute(load_runs(tmp_path), notes=notes)
    assert fits["n_points"].tolist() == [2] and fits["pearson_r"].isna().all()
    assert any("fewer than 3: no fit" in n for n in notes)


# ---- Figure 2 -------------------------------------------------------------------------------------


def test_heatmap_deltas_and_missing_cells(frame, tmp_path):
    cells = heatmap.compute(frame)
    assert list(cells.columns) == ["pair", "benchmark", "base_score", "guided_score", "delta"]
    assert len(cells) == 5 * 6  # every stored pair x the six benchmarks
    gsm = cells[cells["benchmark"] == "gsm8k"].set_index("pair")
    assert gsm.loc["gemma1b_llama8b", "delta"] == pytest.approx(0.8 - 0.15 - 0.2)
    mmlu = cells[cells["benchmark"] == "mmlu"]
    assert mmlu["delta"].isna().all() and not (mmlu["delta"] == 0).any()  # missing, never 0
    write_out = heatmap.write.write_csv(cells, tmp_path / "figure2.csv")
    back = pd.read_csv(write_out)
    assert back[back["benchmark"] == "mmlu"]["delta"].isna().all()


def test_heatmap_cells_carry_n_interval_and_why_missing(frame):
    cells = heatmap.compute_cells(frame).set_index(["pair", "benchmark"])
    gsm = cells.loc[("gemma1b_llama8b", "gsm8k")]
    assert gsm["n"] == 20 and gsm["delta_ci_low"] < gsm["delta"] < gsm["delta_ci_high"]
    assert gsm["base_run"] != gsm["guided_run"] and gsm["missing"] == ""
    assert cells.loc[("qwen1.7b_llama8b", "justeval_safe"), "missing"] == "no judge"  # ran, but no safety score
    assert cells.loc[("llama1b_llama8b", "justeval_safe"), "missing"] == "not run"
    assert cells.loc[("qwen1.7b_llama8b", "mmlu"), "missing"] == "not run"


# ---- Figure 4 / Table 4 ---------------------------------------------------------------------------


def test_overlap_metrics_on_a_hand_built_trace():
    trace = pd.DataFrame(
        {
            "sample_id": ["s"] * 6,
            "consulted": [True, True, True, True, False, False],
            "guide_top_rank": [1, 60, -1, 3, -1, 2],
            "guide_top_in_base_top_p": [True, False, False, True, False, True],
            "guide_top_spelled": [False, False, pd.NA, True, pd.NA, pd.NA],
            "base_top_p_size": [4, 9, 2, 5, -1, -1],
            "top100_overlap": [0.5, 0.7, 0.6, 0.4, np.nan, np.nan],
        }
    )
    m = overlap.trace_metrics(trace)
    assert m["n_consulted"] == 4
    assert m["top50_overlap"] == 0.5  # ranks 1 and 3 of 1, 60, -1, 3; the unencodable -1 does not overlap
    assert m["top_p90_overlap"] == 0.5
    assert m["avg_rank"] == pytest.approx((1 + 60 + 3) / 3) and m["n_unencodable"] == 1
    assert m["spelled_share"] == pytest.approx(1 / 3)
    assert m["mean_top_p_size"] == pytest.approx(5.0) and m["mean_top100_overlap"] == pytest.approx(0.55)


def test_overlap_prefers_probe_runs(frame):
    notes: list[str] = []
    table = overlap.compute(frame, notes=notes).set_index("pair")
    assert list(table.columns[:4]) == ["n_consulted", "top50_overlap", "top_p90_overlap", "avg_rank"]
    assert table.loc["qwen1.7b_llama8b", "source_method"] == "probe"
    assert table.loc["llama1b_llama8b", "source_method"] == "nudging"
    assert table.loc["qwen1.7b_llama8b", "n_consulted"] == 20 * 3  # 20 samples x steps 0, 2, 4
    assert any("no probe runs" in n for n in notes)
    t4 = overlap.table4(table.reset_index(), heatmap.compute(frame))
    assert list(t4.columns) == ["benchmark", "metric", "pearson_r", "pearson_p", "n_pairs"]
    gsm = t4[(t4["benchmark"] == "gsm8k") & (t4["metric"] == "top50_overlap")].iloc[0]
    assert gsm["n_pairs"] == 5 and np.isfinite(gsm["pearson_r"])
    assert t4[t4["benchmark"] == "mmlu"]["pearson_r"].isna().all()


# ---- tables ---------------------------------------------------------------------------------------


def _scores_from_file(run_dir) -> dict:
    lines = Path(run_dir, "samples.jsonl").read_text().splitlines()
    return {r["id"]: r["score"] for r in map(json.loads, lines)}


def test_table1_columns_values_and_paired_test(frame):
    table, cells = tables.table1(frame, n_boot=300)
    assert list(table.columns) == [
        "pair",
        "benchmark",
        "base",
        "guidance",
        "aligned",
        "nudging",
        "blendin",
        "blendin_vs_nudging_pct",
        "intervention_rate",
        "paired_p",
    ]
    row = table[(table["pair"] == "qwen1.7b_llama8b") & (table["benchmark"] == "gsm8k")].iloc[0]
    assert (row["base"], row["guidance"], row["aligned"], row["nudging"], row["blendin"]) == pytest.approx(
        (0.2, 0.5, 0.9, 0.5, 0.55)
    )
    assert row["blendin_vs_nudging_pct"] == pytest.approx(10.0) and row["intervention_rate"] == pytest.approx(0.3)
    other = table[(table["pair"] == "llama1b_llama8b") & (table["benchmark"] == "gsm8k")].iloc[0]
    assert math.isnan(other["aligned"])  # not run: missing, not 0
    # the paired p from an independent reading of the two runs' samples.jsonl
    pick = cells[(cells["pair"] == "qwen1.7b_llama8b") & (cells["benchmark"] == "gsm8k")].set_index("method")
    a, b = _scores_from_file(pick.loc["nudging", "run_dir"]), _scores_from_file(pick.loc["blendin", "run_dir"])
    n01 = sum(a[i] == 0 and b[i] == 1 for i in a)
    n10 = sum(a[i] == 1 and b[i] == 0 for i in a)
    assert row["paired_p"] == pytest.approx(sps.binomtest(n01, n01 + n10, 0.5).pvalue)
    assert pick.loc["blendin", "vs_nudging_n"] == 20 and np.isfinite(pick.loc["blendin", "mdd"])


def test_table_intervals_bootstrap_and_wald(frame):
    _, boot = tables.table1(frame, ci="bootstrap", n_boot=500)
    _, wald = tables.table1(frame, ci="wald")
    key = (wald["pair"] == "gemma1b_llama8b") & (wald["benchmark"] == "gsm8k") & (wald["method"] == "nudging")
    half = 1.959963985 * math.sqrt(0.65 * 0.35 / 20)
    assert wald[key][["ci_low", "ci_high"]].iloc[0].tolist() == pytest.approx([0.65 - half, 0.65 + half])
    b = boot[key].iloc[0]
    assert b["ci_low"] < 0.65 < b["ci_high"] and b["ci_method"] == "bootstrap"


def test_tables_2_3_5_6(frame):
    t2, _ = tables.table2(frame, n_boot=200)
    assert t2[["benchmark", "pair"]].values.tolist() == [["gsm8k", "qwen1.7b_llama8b"]]  # only the full-set run
    assert t2["nudging"].iloc[0] == pytest.approx(np.mean(binary(0.5, 20, 3) + binary(0.5, 40, 11)))
    assert math.isnan(t2["blendin"].iloc[0])
    t3, _ = tables.table3(frame, n_boot=200)
    assert len(t3) == 5 and (t3["cap"] < t3["nudging"]).all()
    t5 = tables.table5(frame, n_boot=200)
    q = t5[(t5["pair"] == "qwen1.7b_llama8b") & (t5["benchmark"] == "gsm8k")]
    assert sorted(q[q["sweep"] == "tau"]["tau"]) == [0.3, 0.4, 0.5]
    assert sorted(q[q["sweep"] == "alpha"]["alpha"]) == ["0.5", "auto"]
    t6, _ = tables.table6(frame, n_boot=200)
    assert sorted(t6["pair"]) == ["llama1b_llama8b", "qwen1.7b_llama8b"] and t6["cc"].isna().all()


def test_tables_main_writes_every_format(store, tmp_path, capsys):
    assert tables.main(["--results", str(store), "--out", str(tmp_path), "--ci", "wald"]) == 0
    for stem in ("table1", "table2", "table3", "table5", "table6"):
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / f"{stem}.{ext}").is_file(), f"{stem}.{ext}"
    md = (tmp_path / "table1.md").read_text()
    assert "n/a" in md and "Wald" in md and "Q→L" in md
    assert "\\begin{tabular}" in (tmp_path / "table1.tex").read_text()
    assert "settings:" in capsys.readouterr().out


# ---- subset vs full set ---------------------------------------------------------------------------


def test_subset_against_full_set(frame):
    table = subset.compute(frame, draws=2000)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["pair"], row["benchmark"], row["method"]) == ("qwen1.7b_llama8b", "gsm8k", "nudging")
    assert row["n_shared"] == 20 and row["full_on_subset_ids"] == pytest.approx(row["subset_score"])
    assert row["score_agreement"] == 1.0 and row["output_agreement"] == 1.0
    assert row["spread_p2_5"] < row["full_score"] < row["spread_p97_5"]
    assert row["full_score"] == pytest.approx(np.mean(binary(0.5, 20, 3) + binary(0.5, 40, 11)))


# ---- the paper's values ---------------------------------------------------------------------------


def test_paper_values_transcription():
    values = paper.load_paper_values()
    counts = values["artefact"].value_counts().to_dict()
    assert counts == {
        "table1": 108,
        "figure2": 90,
        "table2": 45,
        "table6": 27,
        "table4": 24,
        "table5": 21,
        "table3": 16,
    }

    def get(**kw):
        return values[np.logical_and.reduce([values[k] == v for k, v in kw.items()])]["value"].tolist()

    assert get(artefact="table1", pair="qwen1.7b_llama8b", benchmark="gsm8k", method="blendin") == [0.31]
    assert get(artefact="figure2", pair="qwen1.7b_qwen8b", benchmark="arc_challenge") == [-0.73]
    assert get(artefact="table4", benchmark="xstest", metric="top50_pearson_r") == [0.047]
    assert get(
        artefact="table2", pair="llama1b_gemma9b", benchmark="xstest", metric="ci_halfwidth", method="nudging"
    ) == [0.037]
    assert "cc" not in set(values[values["artefact"] == "table6"]["method"])


def test_paper_disagreements_are_found():
    found = paper.disagreements(paper.load_paper_values())
    same = found[found["kind"].str.startswith("the same setting")]
    pairs = {(r["benchmark"], r["method"], r["first"].split()[0], r["second"].split()[0]) for _, r in same.iterrows()}
    assert ("gsm8k", "blendin", "table2", "table5") in pairs  # Table 5's auto row vs Table 2: 0.12 vs 0.29
    assert ("truthfulqa", "nudging", "table1", "table6") in pairs  # Q→L TruthfulQA NUDGING: 0.48 vs 0.43
    assert not found["kind"].str.contains("Figure 2").any()  # Figure 2 agrees with Table 1 (NUDG. - Base)
    assert len(same) == 5


# ---- every command, on a synthetic and on an empty store ------------------------------------------

COMMANDS = {
    "paradox": (paradox.main, ["paradox.csv", "paradox_points.csv", "figure3.png", "figure3.pdf"]),
    "heatmap": (heatmap.main, ["figure2.csv", "figure2.png", "figure2.pdf"]),
    "overlap": (overlap.main, ["overlap.csv", "table4.csv", "figure4.png", "figure4.pdf"]),
    "tables": (tables.main, ["table1.csv", "table1.md", "table1.tex", "table6.tex"]),
    "subset": (subset.main, ["subset_vs_full.csv", "subset_vs_full.png"]),
}  # calibration has nothing to compute on this store (no forced runs): tests/test_calibration.py


def test_report_on_a_synthetic_store(store, tmp_path, capsys):
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    (analysis / "calibration.csv").write_text("pair,benchmark\nold,run\n")  # left by an earlier run
    (store / "bench").mkdir(exist_ok=True)
    (store / "bench" / "speed-x.json").write_text(
        json.dumps(
            {
                "meta": {"pair": "a_b", "device": "cpu", "threads": 2, "created_at": "2026-11-23T11:27:33+00:00"},
                "rows": [{"method": "base", "tokens_per_s": 8.5}],
            }
        )
    )
    assert report.main(["--results", str(store), "--out", str(tmp_path / "report"), "--analysis", str(analysis)]) == 0
    for files in (f for _, fs in COMMANDS.values() for f in fs):
        assert (analysis / files).is_file(), files
    md = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "index.html").read_text()
    for needle in (
        "**How to read this page**",
        "- **What was run:** 58 runs of 5 pairs",
        "20-60 (median 20) items per run",
        "not the paper's effects",
        "REPRO_N=100 REPRO_TOKENS=512",
        "## Figure 2",
        "## Figure 3",
        "## Figure 4 and Table 4",
        "### Table 1",
        "### Table 5",
        "## Where the paper disagrees with itself",
        "## Is a 100-sample subset enough",
        "## Run inventory",
        "## What is missing for a full reproduction",
        "without an LLM judge",
        "experiment=paper_fig2",
        "paper (published)",
        "`spelled_share`: share of consulted steps",  # raw column names are defined
        "our protocol, 20 items (seed 0), 64 new tokens",  # the setting as a short line ...
        "`protocol=ours, n=20, seed=0",  # ... with the full string below it
        "## Stored results of other runs (not computed from this folder)",
        "### Speed",
        "made 2026-11-23 11:27 UTC; machine: cpu, threads 2",
        "tokens_per_s",
    ):
        assert needle in md, needle
    assert md.index("How to read this page") < md.index("## Protocol settings")  # the box comes first
    assert "(#stored-results-of-other-runs-not-computed-from-this-folder)" in md  # listed in the contents
    assert "## Calibration" not in md and "Diagnosis" not in md  # calibration.csv is stale: not shown
    assert (analysis / "calibration.csv").read_text() == "pair,benchmark\nold,run\n"  # ... nor destroyed
    assert '<img src="figures/figure2.png"' in html and '<div class="scroll"><table>' in html
    assert "<em>To Intervene or Not</em>" in html and "*To Intervene" not in html
    for href in re.findall(r'href="([^"]+)"', html):  # every link stays inside the report folder
        assert href.startswith("#") or (tmp_path / "report" / href).is_file(), href
    assert (tmp_path / "report" / "figures" / "figure3.png").is_file()
    assert (tmp_path / "report" / "figures" / "figure3.pdf").is_file()
    assert "settings:" in capsys.readouterr().out


def test_report_on_an_empty_store(tmp_path, capsys):
    assert report.main(["--results", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "No runs yet" in md and "experiment=paper_table1" in md
    assert "no finished runs" in capsys.readouterr().out


def test_optional_section_renders_csv_and_json(tmp_path):
    (tmp_path / "calibration_x.csv").write_text("pair,ece\na_b,0.1\n")
    (tmp_path / "choice.json").write_text(json.dumps({"alpha": 0.5, "tau": 0.4, "trials": [{"alpha": 0.3}]}))
    lines = report.render_optional_section(
        "Calibration", [tmp_path / "calibration_x.csv", tmp_path / "choice.json"], tmp_path
    )
    text = "\n".join(lines)
    assert "### Calibration" in text and "| a_b | 0.100 |" in text and "trials" in text
    assert report.render_optional_section("Nothing", [], tmp_path) == []


# ---- the field's other rules and the failure detectors in the analysis ----------------------------


def rules_store(results: Path) -> Path:
    """GSM8K on one pair: base, NUDGING at three taus, KAD's token_wise at three thresholds (deferred mass
    known) with the failure detectors' shares stored."""
    write_run(results, "p", "gsm8k", "base", [0, 1, 0, 1])
    for tau, scores in ((0.2, [1, 1, 0, 1]), (0.4, [1, 0, 0, 1]), (0.6, [0, 0, 0, 1])):
        write_run(results, "p", "gsm8k", "nudging", scores, tau=tau, rate=tau / 2)
    for threshold, mass, scores in ((0.1, 0.05, [1, 1, 1, 0]), (0.4, 0.3, [1, 0, 1, 0]), (0.8, 0.7, [0, 0, 0, 0])):
        write_run(
            results,
            "p",
            "gsm8k",
            "kad_token_wise",
            scores,
            rate=1.0,  # every step defers some mass: its intervention rate says little
            name_suffix=f"-t{threshold}",
            extra_metrics={
                "method_params": {"name": "kad_token_wise", "threshold": threshold},
                "tau": None,
                "deferred_mass": mass,
                "buried_share": 0.25,
                "runaway_share": 0.5,
                "loop_share": 0.0,
                "foreign_share": 0.0,
            },
        )
    return results


def test_figure3_and_the_side_by_side_table_include_the_deferral_rules(tmp_path):
    from analysis import compare

    frame = load_runs(rules_store(tmp_path / "results"))
    points = paradox.compute_points(frame)
    kad = points[points["method"] == "kad_token_wise"].sort_values("threshold")
    assert kad["threshold"].tolist() == [0.1, 0.4, 0.8] and set(kad["measure"]) == {"deferred_mass"}
    assert kad["x"].tolist() == [0.05, 0.3, 0.7]  # the deferred mass, not the intervention rate (1.0)
    nudging = points[points["method"] == "nudging"].sort_values("threshold")
    assert nudging["x"].tolist() == pytest.approx([0.1, 0.2, 0.3]) and set(nudging["measure"]) == {"intervention_rate"}
    fits = paradox.compute(frame, points=points)
    row = fits[fits["method"] == "kad_token_wise"].iloc[0]
    assert row["pearson_r"] == pytest.approx(sps.pearsonr([0.05, 0.3, 0.7], [0.75, 0.5, 0.0]).statistic)
    fig = paradox.plot(points, fits, "kad_token_wise", "token", frame)
    assert "deferred mass" in fig.axes[0].get_xlabel()
    table = compare.compute(frame)
    assert table["method"].tolist()[:2] == ["base", "nudging"] and table["method"].iloc[-1] == "kad_token_wise"
    kad_rows = table[table["method"] == "kad_token_wise"]
    assert kad_rows["buried_share"].tolist() == [0.25] * 3 and kad_rows["deferred_mass"].notna().all()
    [(title, shown)] = compare.blocks(table)
    assert title == "GSM8K" and "KAD tok." in set(shown["method"]) and shown["buried"].iloc[-1] == "25%"
