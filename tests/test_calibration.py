"""analysis.calibration on hand-built and synthetic teacher-forced traces whose answers are known by
construction: ECE and AUROC by hand, perfectly separating / reversed alphas, token kinds and positions,
the sample (not token) bootstrap, the command and the report section."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from synthetic_store import forced_trace, synthetic_forced, write_forced_run, write_run

from analysis import calibration, report, stats
from analysis.load import load_runs

N_BOOT = 300  # enough for the tests' interval checks, fast on two cores


def run_command(results, out, *extra):
    return calibration.main(["--results", str(results), "--out", str(out), "--n-boot", str(N_BOOT), *extra])


def read(out) -> pd.DataFrame:
    return pd.read_csv(out / "calibration.csv")


def value(table, metric, split="all", scope="u<0.4", benchmark=None, pair=None, column="value"):
    hit = table[(table["metric"] == metric) & (table["split"] == split) & (table["scope"] == scope)]
    if benchmark is not None:
        hit = hit[hit["benchmark"] == benchmark]
    if pair is not None:
        hit = hit[hit["pair"] == pair]
    assert len(hit) == 1, (metric, split, scope, benchmark, pair, len(hit))
    return hit.iloc[0][column]


# ---- ECE and AUROC by hand --------------------------------------------------------------------------


def test_ece_of_four_positions_in_two_bins_by_hand():
    conf, hit = [0.15, 0.15, 0.85, 0.85], [1, 0, 1, 1]
    # bin [0.1, 0.2): accuracy 0.5, confidence 0.15 -> gap 0.35; bin [0.8, 0.9): 1.0 vs 0.85 -> 0.15
    assert stats.ece(conf, hit) == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)
    rel = stats.reliability(conf, hit)
    assert rel["count"][1] == 2 and rel["count"][8] == 2 and rel["count"].sum() == 4
    assert rel["accuracy"][1] == 0.5 and rel["confidence"][8] == pytest.approx(0.85)
    assert math.isnan(rel["accuracy"][0])
    # bin edges: 0.1 opens bin 1, 1.0 falls into the last bin
    assert stats.confidence_bins([0.0, 0.0999, 0.1, 0.95, 1.0]).tolist() == [0, 0, 1, 9, 9]
    assert stats.ece([1.0, 1.0], [1, 1]) == 0.0 and math.isnan(stats.ece([], []))
    # the resampled ECE with every sample drawn once is the ECE
    draws = calibration.ece_draws(np.ones((1, 2)), np.array([0, 0, 1, 1]), np.array(conf), np.array(hit))
    assert draws[0] == pytest.approx(0.25)


def test_bias_corrected_ece_holds_its_estimate():
    # the case: every resampled ECE lies above the plain one (0.042 with draws in [0.044, 0.121])
    estimate, (low, high) = stats.bias_corrected(0.042, np.linspace(0.044, 0.121, 101), lower=0)
    assert 0 <= low <= estimate <= high < 0.042
    assert estimate == pytest.approx(max(0.0, 2 * 0.042 - np.linspace(0.044, 0.121, 101).mean()))


def test_auroc_by_hand_by_scipy_and_by_resampled_counts():
    scores = np.array([0.9, 0.4, 0.6, 0.4, 0.2])
    labels = np.array([1, 1, 0, 0, 0], bool)
    # positive 0.9 beats all three negatives (3); positive 0.4 beats 0.2 (1) and ties 0.4 (1/2): 4.5 of 6
    assert stats.auroc(scores, labels) == pytest.approx(4.5 / 6)
    u = sps.mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert stats.auroc(scores, labels) == pytest.approx(u / (2 * 3))
    assert math.isnan(stats.auroc([0.1, 0.2], [True, True]))
    cluster = np.array([0, 0, 1, 1, 2])
    ones = np.ones((1, 3))
    assert stats.auroc_draws(ones, cluster, scores, labels)[0] == pytest.approx(4.5 / 6)
    # drawing cluster 0 twice and cluster 2 never equals the AUROC of the data with cluster 0 doubled
    w = np.array([[2.0, 1.0, 0.0]])
    keep = np.repeat(np.arange(5), w[0, cluster].astype(int))
    assert stats.auroc_draws(w, cluster, scores, labels)[0] == pytest.approx(stats.auroc(scores[keep], labels[keep]))
    rng = np.random.default_rng(3)
    big_scores, big_labels, big_cluster = rng.random(300).round(2), rng.random(300) < 0.4, rng.integers(0, 20, 300)
    assert stats.auroc_draws(np.ones((1, 20)), big_cluster, big_scores, big_labels, budget=50)[0] == pytest.approx(
        stats.auroc(big_scores, big_labels)
    )


def test_verdict_wording_follows_the_interval():
    def row(lo, hi):
        return dict(value=(lo + hi) / 2, ci_low=lo, ci_high=hi)

    assert calibration.verdict(row(0.55, 0.7), 20, 20) == "held"
    assert calibration.verdict(row(0.45, 0.6), 20, 20) == "not shown"
    assert calibration.verdict(row(0.2, 0.45), 20, 20) == "reversed"
    assert calibration.verdict(row(0.6, 0.9), 20, 3) == "not measurable"
    assert calibration.verdict(row(math.nan, math.nan), 20, 20) == "not measurable"


# ---- token kinds and positions ------------------------------------------------------------------------


def test_token_kinds_from_the_output_text_and_offsets():
    assert calibration.token_kind("The") == "word_start"
    assert calibration.token_kind(" cat", "The") == "word_start"
    assert calibration.token_kind("s", "The cat") == "other"  # a word continuation
    assert calibration.token_kind("\n", "x.") == "other"
    assert calibration.token_kind(" 12", "ate") == "digit" and calibration.token_kind("4.", "") == "digit"
    assert calibration.token_kind(".", "12") == "punctuation" and calibration.token_kind(" $", "a") == "punctuation"
    assert calibration.token_kind("Their", "ok.\n") == "word_start"
    assert calibration.token_kind("", "abc") == "other"  # the first byte of a character: no text yet
    output = "The cats ate 12.\nCafé"
    offsets = [3, 7, 8, 12, 15, 16, 17, 20, 20, 21]  # "Caf", then "é" arriving over two tokens
    assert calibration.sample_kinds(output, offsets) == [
        "word_start",
        "word_start",
        "other",
        "word_start",
        "digit",
        "punctuation",
        "other",
        "word_start",
        "other",
        "other",
    ]
    assert calibration.sample_kinds(None, [1, 2]) == ["unknown", "unknown"]


def test_positions_absolute_and_relative():
    absolute, third = calibration.position_split(np.arange(60), np.full(60, 60))
    assert (absolute == "tokens 1-10").sum() == 10 and (absolute == "tokens 11-50").sum() == 40
    assert (absolute == "tokens 51+").sum() == 10
    assert [int((third == t).sum()) for t in calibration.THIRDS] == [20, 20, 20]
    _, third3 = calibration.position_split([0, 1, 2], [3, 3, 3])
    assert third3.tolist() == calibration.THIRDS


def hand_store(tmp_path):
    """Two answers: s0 = 60 tokens (base right on the first 10 only, guidance right on digits), s1 = 3."""
    pieces = ["The", " cat", "s", " ate", " 12", ".", "\n", "Then", " 4", "!"] * 6
    n = len(pieces)
    base_right = [i < 10 for i in range(n)]
    guide_right = [any(c.isdigit() for c in p) for p in pieces]
    t0, o0 = forced_trace(
        "s0",
        pieces,
        base_top_prob=0.2,
        base_correct=base_right,
        guide_correct=guide_right,
        blend_correct_auto=guide_right,
    )
    t1, o1 = forced_trace(
        "s1",
        ["Yes", ",", " 7"],
        base_top_prob=[0.2, 0.9, 0.2],
        base_correct=[True, True, False],
        guide_correct=[False, True, True],
    )
    write_forced_run(
        tmp_path, "llama1b_llama8b", "gsm8k", pd.concat([t0, t1], ignore_index=True), [o0, o1], ["s0", "s1"]
    )
    return tmp_path


def test_accuracy_by_kind_and_position_on_a_hand_built_trace(tmp_path):
    results = hand_store(tmp_path / "store")
    out = tmp_path / "out"
    assert run_command(results, out) == 0
    table = read(out)
    # u < 0.4 drops s1's ","; kinds at u < 0.4: s0 has 12 digit tokens (" 12", " 4"), s1 one (" 7")
    assert value(table, "acc_guidance", "kind=digit") == 1.0
    assert value(table, "acc_guidance", "kind=digit", column="n_positions") == 13
    assert value(table, "acc_guidance", "kind=digit", column="n_samples") == 2
    # word starts: s0 "The", " cat", " ate", "Then" x 6 = 24, base right on the first 10 tokens' 4; s1 "Yes"
    assert value(table, "acc_base", "kind=word_start", column="n_positions") == 25
    assert value(table, "acc_base", "kind=word_start") == pytest.approx((4 + 1) / 25, rel=1e-5)
    assert value(table, "acc_base", "kind=punctuation", column="n_positions") == 12  # "." and "!" in s0
    assert value(table, "acc_base", "kind=other", column="n_positions") == 12  # "s" and "\n"
    # positions: s0's first 10 all base right, s1's 2 unsure tokens (1 right) are also in tokens 1-10
    assert value(table, "acc_base", "position=tokens 1-10") == pytest.approx(11 / 12, rel=1e-5)
    assert value(table, "acc_base", "position=tokens 11-50") == 0.0
    assert value(table, "acc_base", "position=tokens 51+", column="n_positions") == 10
    assert value(table, "acc_base", "relpos=first third", column="n_positions") == 21  # 20 of s0 + "Yes"
    # all positions: s1's "," (u = 0.9) is back
    assert value(table, "acc_base", scope="all") == pytest.approx(12 / 63, rel=1e-5)
    # either right: s0's first 10 tokens and the 10 later digits, all 3 of s1
    assert value(table, "acc_oracle", scope="all") == pytest.approx(23 / 63, rel=1e-5)
    # ECE of the base at u < 0.4: every confidence 0.2, accuracy 11 / 62
    assert value(table, "ece_base") == pytest.approx(abs(11 / 62 - 0.2), rel=1e-5)


# ---- known answers on synthetic forced runs ----------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    results = tmp_path_factory.mktemp("forced")
    t, o, i = synthetic_forced(30, 40, "held", seed=1, prefix="g")
    write_forced_run(results, "qwen1.7b_llama8b", "gsm8k", t, o, i)
    t, o, i = synthetic_forced(30, 20, "none", seed=2, prefix="t")
    write_forced_run(results, "qwen1.7b_llama8b", "truthfulqa", t, o, i)
    t, o, i = synthetic_forced(25, 40, "reversed", seed=3, prefix="g")
    write_forced_run(results, "smollm2_gemma3", "gsm8k", t, o, i)
    out = results / "analysis"
    assert run_command(results, out) == 0
    return results, out


def test_alpha_that_separates_the_cases_gives_auroc_1_and_reversed_gives_0(synthetic):
    _, out = synthetic
    table = read(out)
    held = dict(pair="qwen1.7b_llama8b", benchmark="gsm8k")
    reversed_ = dict(pair="smollm2_gemma3", benchmark="gsm8k")
    for scope in ("all", "u<0.4"):
        assert value(table, "auroc_alpha_auto", scope=scope, **held) == 1.0
        assert value(table, "auroc_alpha_nolambda", scope=scope, **held) == 1.0
        assert value(table, "auroc_alpha_auto", scope=scope, **reversed_) == 0.0
        assert value(table, "auroc_alpha_auto", scope=scope, column="ci_low", **held) == 1.0
    # under "held" BlendIn picks whichever model is right: it equals the oracle; reversed, it is right
    # only where both are
    assert value(table, "acc_blend_auto", **held) == pytest.approx(value(table, "acc_oracle", **held))
    assert value(table, "acc_blend_auto", **reversed_) == pytest.approx(value(table, "share_both_right", **reversed_))
    assert value(table, "acc_nudging", **held) == value(table, "acc_guidance", **held)
    assert value(table, "acc_blend_0.3", **held) == value(table, "acc_base", **held)
    # the entropy weight is noise in the synthetic traces: its AUROC interval contains 0.5
    assert (
        value(table, "auroc_alpha_entropy", column="ci_low", **held)
        < 0.5
        < value(table, "auroc_alpha_entropy", column="ci_high", **held)
    )
    # the point AUROC equals scipy's Mann-Whitney U / (n1 n0) on the same positions
    trace = synthetic_forced(30, 40, "held", seed=1, prefix="g")[0]
    unsure = trace[(trace["base_top_prob"] < 0.4) & (trace["base_correct"] != trace["guide_correct"])]
    pos, neg = unsure[unsure["guide_correct"]]["alpha_entropy"], unsure[~unsure["guide_correct"]]["alpha_entropy"]
    expected = sps.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))
    assert value(table, "auroc_alpha_entropy", **held) == pytest.approx(expected, abs=1e-6)
    assert value(table, "auroc_alpha_entropy", column="n_positions", **held) == len(unsure)
    assert value(table, "count_guidance_only", **held) == len(pos)


def test_pooled_cell_and_alpha_bins(synthetic):
    _, out = synthetic
    table = read(out)
    pooled = dict(pair="qwen1.7b_llama8b", benchmark="pooled")
    n_g = value(table, "acc_base", pair="qwen1.7b_llama8b", benchmark="gsm8k", column="n_positions")
    n_t = value(table, "acc_base", pair="qwen1.7b_llama8b", benchmark="truthfulqa", column="n_positions")
    assert value(table, "acc_base", column="n_positions", **pooled) == n_g + n_t
    assert value(table, "acc_base", column="n_samples", **pooled) == 60
    assert not (table["pair"].eq("smollm2_gemma3") & table["benchmark"].eq("pooled")).any()  # one benchmark
    held = dict(pair="qwen1.7b_llama8b", benchmark="gsm8k")
    bins = [f"alpha_auto={a:.1f}-{a + 0.2:.1f}" for a in (0.0, 0.2, 0.4, 0.6, 0.8)]
    assert sum(value(table, "acc_base", b, column="n_positions", **held) for b in bins) == n_g
    # held: no guidance-only case below alpha 0.6, no base-only case above 0.4
    assert value(table, "count_guidance_only", bins[0], **held) == 0
    assert value(table, "count_base_only", bins[4], **held) == 0
    assert value(table, "share_guidance_only", bins[4], **held) > 0.3


def test_bootstrap_resamples_samples_not_tokens(tmp_path):
    """10 answers of 20 tokens: the base is right on every token of 5 answers and on none of the others.
    Resampling answers gives a wide interval (10 independent units); resampling the 200 tokens as if
    independent would give a far narrower one."""
    frames, outputs, ids = [], [], []
    for i in range(10):
        t, o = forced_trace(f"s{i}", ["a"] * 20, base_correct=i < 5)
        frames.append(t)
        outputs.append(o)
        ids.append(f"s{i}")
    write_forced_run(tmp_path / "store", "llama1b_llama8b", "gsm8k", pd.concat(frames, ignore_index=True), outputs, ids)
    assert run_command(tmp_path / "store", tmp_path / "out", "--seed", "7") == 0
    table = read(tmp_path / "out")
    low, high = value(table, "acc_base", column="ci_low"), value(table, "acc_base", column="ci_high")
    # by hand: the same draws of answers (see stats.cluster_weights), each answer's accuracy 1 or 0
    draws = np.random.default_rng(7).integers(0, 10, size=(N_BOOT, 10))
    per_answer = np.array([1.0] * 5 + [0.0] * 5)
    hand = np.percentile(per_answer[draws].mean(axis=1), [2.5, 97.5])
    assert (low, high) == pytest.approx(tuple(hand))
    token_low, token_high = stats.bootstrap_ci(np.repeat(per_answer, 20), N_BOOT, seed=7)
    assert high - low > 2.5 * (token_high - token_low)
    assert value(table, "acc_base") == 0.5 and value(table, "acc_base", column="n_samples") == 10


# ---- the command and the report ------------------------------------------------------------------------


def test_command_without_forced_runs_writes_nothing(tmp_path, capsys):
    assert run_command(tmp_path / "empty", tmp_path / "out") == 2  # no such folder
    assert "no such folder" in capsys.readouterr().err
    write_run(tmp_path / "store", "llama1b_llama8b", "gsm8k", "base", [1.0, 0.0])  # a store without forced runs
    assert run_command(tmp_path / "store", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "no teacher-forced run (method forced)" in err and "method=forced" in err
    assert not (tmp_path / "out").exists()


def test_command_on_a_synthetic_store_writes_every_output(synthetic):
    results, out = synthetic
    for name in (
        "calibration.csv",
        "calibration_reliability.csv",
        "calibration_table.md",
        "calibration_summary.md",
        "calibration_notes.md",
        "calibration_reliability.png",
        "calibration_reliability.pdf",
        "calibration_alpha.png",
        "calibration_alpha.pdf",
    ):
        assert (out / name).is_file(), name
    table = read(out)
    assert list(table.columns) == calibration.COLUMNS
    assert set(table["scope"]) == {"all", "u<0.4"}
    assert {
        "kind=digit",
        "kind=word_start",
        "kind=punctuation",
        "kind=other",
        "position=tokens 1-10",
        "relpos=last third",
    } <= set(table["split"])
    assert ((table["ci_low"] <= table["value"] + 1e-9) | table["ci_low"].isna()).all()
    assert ((table["ci_high"] >= table["value"] - 1e-9) | table["ci_high"].isna()).all()  # intervals hold it
    ece = table[table["metric"].str.startswith("ece_")]
    assert ece[ece["metric"].str.startswith("ece_bc_")]["ci_low"].notna().all()
    assert ece[~ece["metric"].str.startswith("ece_bc_")]["ci_low"].isna().all()  # plain ECE: biased, no interval
    bins = pd.read_csv(out / "calibration_reliability.csv")
    cell = bins[(bins["pair"] == "qwen1.7b_llama8b") & (bins["benchmark"] == "gsm8k") & (bins["scope"] == "u<0.4")]
    assert cell[cell["model"] == "base"]["n_positions"].sum() == value(
        table, "acc_base", pair="qwen1.7b_llama8b", benchmark="gsm8k", column="n_positions"
    )
    assert cell[(cell["model"] == "base") & (cell["bin_low"] >= 0.4)]["n_positions"].sum() == 0
    summary = (out / "calibration_summary.md").read_text()
    assert "held in 1, was not shown in 1 and was reversed in 1" in summary
    held = dict(pair="qwen1.7b_llama8b", benchmark="gsm8k")
    n = int(value(table, "acc_base", column="n_positions", **held))
    samples = int(value(table, "acc_base", column="n_samples", **held))
    auc = [value(table, "auroc_alpha_auto", column=c, **held) for c in ("value", "ci_low", "ci_high")]
    assert f"At u < 0.4 ({n} positions of {samples} samples)" in summary
    assert f"AUROC {auc[0]:.2f} [{auc[1]:.2f}, {auc[2]:.2f}]: the premise **held**" in summary
    blend = value(table, "acc_blend_auto", **held)
    assert f"BlendIn's choice was right at {100 * blend:.1f}%" in summary
    assert "was **reversed**" in summary and "was **not shown**" in summary
    assert "| guidance = NUDGING |" in (out / "calibration_table.md").read_text()


def test_forced_runs_are_chosen_per_source_and_size(tmp_path):
    t, o, i = synthetic_forced(6, 10, "held", seed=1)
    write_forced_run(tmp_path, "llama1b_llama8b", "gsm8k", t, o, i)
    t2, o2, i2 = synthetic_forced(8, 10, "held", seed=2)
    write_forced_run(tmp_path, "llama1b_llama8b", "gsm8k", t2, o2, i2)
    write_forced_run(
        tmp_path,
        "llama1b_llama8b",
        "gsm8k",
        t,
        o,
        i,
        source=str(tmp_path / "runs" / "llama1b_llama8b" / "gsm8k" / "base-n6-s0-0001"),
    )
    notes = []
    runs = calibration.choose_runs(load_runs(tmp_path), notes=notes)
    assert sorted(runs["source"]) == ["outputs of llama1b_llama8b/gsm8k/base-n6-s0-0001", "reference"]
    assert runs[runs["source"] == "reference"]["n_samples"].iloc[0] == 8
    assert any("left out" in n for n in notes)


def test_report_shows_the_calibration_section(synthetic, tmp_path):
    results, _ = synthetic
    analysis = tmp_path / "analysis"
    assert report.main(["--results", str(results), "--out", str(tmp_path / "report"), "--analysis", str(analysis)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Calibration: does alpha's premise hold?" in md
    assert "the premise **held**" in md and "| guidance = NUDGING |" in md and "AUROC auto" in md
    assert "figures/calibration_reliability.png" in md and "figures/calibration_alpha.png" in md
    assert (tmp_path / "report" / "figures" / "calibration_alpha.png").is_file()
    assert "(#calibration-does-alpha-s-premise-hold)" in md
    html = (tmp_path / "report" / "index.html").read_text()
    assert 'id="calibration-does-alpha-s-premise-hold"' in html
