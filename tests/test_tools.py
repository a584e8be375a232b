"""The command-line tools around runs: diagnose (the intervention-rate diagnostic), tune (Appendix
A.4's protocol) and bench (speed against transformers' generate), end to end on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blendin.data import data_dir
from blendin.diagnose import rate_interval, token_kind, verdict

REPO = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(not data_dir().exists(), reason="no benchmark data directory")


def run_cli(module: str, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert not check or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tiny_pair(model_dirs) -> list[str]:
    return [
        "pair.name=tiny",
        f"pair.base.source={model_dirs['cross_base']}",
        f"pair.guidance.source={model_dirs['cross_guidance']}",
        "device=cpu",
    ]


def test_diagnosis_rules_by_hand():
    assert [token_kind(t) for t in (" 42", "7.", " the", " The", ".", ",\n", "ing", "\n")] == [
        "digit",
        "digit",
        "word start",
        "word start",
        "punctuation",
        "punctuation",
        "other",
        "other",
    ]
    assert verdict(0.25, 0.4, 0.2) == "high" and verdict(0.05, 0.15, 0.2) == "low"
    assert verdict(0.1, 0.3, 0.2) == "borderline"
    low, high = rate_interval([0.1, 0.2, 0.3, 0.4])
    assert 0.1 <= low < 0.25 < high <= 0.4
    assert rate_interval([0.3] * 5) == (0.3, 0.3)


@needs_data
def test_diagnose_runs_probe_runs_and_stores_a_verdict_per_benchmark(model_dirs, tmp_path):
    proc = run_cli(
        "blendin.diagnose",
        *tiny_pair(model_dirs),
        "benchmarks=[gsm8k,xstest]",
        "n=3",
        "max_new_tokens=8",
        f"results_dir={tmp_path}",
    )
    assert "| gsm8k |" in proc.stdout and "| xstest |" in proc.stdout
    report = json.loads((tmp_path / "diagnose" / "tiny.json").read_text())
    for name, row in report["benchmarks"].items():
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert metrics["method"] == "probe" and metrics["intervention_rate"] == 0  # observed, never applied
        assert row["intervention_rate"] == pytest.approx(metrics["consult_rate"], abs=1e-4)
        low, high = row["ci95"]
        assert low <= row["intervention_rate"] <= high
        assert row["verdict"] == verdict(low, high, 0.2)
    again = run_cli(
        "blendin.diagnose",
        *tiny_pair(model_dirs),
        "benchmarks=[gsm8k]",
        "n=3",
        "max_new_tokens=8",
        f"results_dir={tmp_path}",
    )
    assert "finished run, skipped" in again.stderr  # probe runs are stored and reused
    nudged = run_cli(
        "blendin.diagnose",
        *tiny_pair(model_dirs),
        "benchmarks=[gsm8k]",
        "n=3",
        "max_new_tokens=8",
        "observe_with=nudging",
        f"results_dir={tmp_path}",
    )
    assert "NUDGING's own steps" in nudged.stdout
    row = json.loads((tmp_path / "diagnose" / "tiny-nudging.json").read_text())["benchmarks"]["gsm8k"]
    metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
    assert metrics["method"] == "nudging"
    assert row["intervention_rate"] == pytest.approx(metrics["consult_rate"], abs=1e-4)
    bad = run_cli("blendin.diagnose", *tiny_pair(model_dirs), "observe_with=blendin", check=False)
    assert bad.returncode != 0 and "observe_with='blendin' must be probe" in bad.stderr


@needs_data
def test_tune_follows_appendix_a4_on_held_out_items(model_dirs, tmp_path):
    run_cli(
        "blendin.tune",
        *tiny_pair(model_dirs),
        "benchmark=truthfulqa",
        "n_validation=3",
        "n_test=4",
        "max_new_tokens=6",
        "alphas=[0.3,0.7]",
        "taus=[0.3,0.4]",
        "refine=0.1",
        f"results_dir={tmp_path}",
    )
    report = json.loads((tmp_path / "tune" / "tiny" / "truthfulqa" / "choice.json").read_text())
    trials = report["trials"]
    assert [t["step"][0] for t in trials][:2] == ["1", "1"] and {t["tau"] for t in trials[:2]} == {0.4}
    best_first = max(trials[:2], key=lambda t: t["score"])["alpha"]
    refined = [t["alpha"] for t in trials if t["step"].startswith("2")]
    assert set(refined) <= {round(best_first - 0.1, 2), round(best_first + 0.1, 2)}
    chosen = max(trials, key=lambda t: t["score"])
    assert (report["choice"]["alpha"], report["choice"]["tau"]) == (chosen["alpha"], chosen["tau"])
    assert "outside the 4-item test subset" in report["validation"]

    def ids(run):
        return {json.loads(line)["id"] for line in (Path(run) / "samples.jsonl").read_text().splitlines()}

    validation = set().union(*(ids(t["run_dir"]) for t in trials))
    test = ids(report["test"]["chosen"]["run_dir"])
    assert len(test) == 4 and not validation & test, "tuning never touches test items"
    assert report["test"]["default"]["alpha"] == "auto"


def test_bench_compares_every_method_with_transformers_generate(tmp_path):
    run_cli(
        "blendin.bench",
        "--synthetic",
        "tiny",
        "--batch-sizes",
        "1",
        "2",
        "--lengths",
        "4",
        "8",
        "--n",
        "2",
        "--methods",
        "base",
        "nudging",
        "blendin",
        "--identity",
        "--out",
        str(tmp_path),
    )
    [path] = tmp_path.glob("speed-*.json")
    rows = json.loads(path.read_text())["rows"]
    fixed = [r for r in rows if "mode" not in r]
    assert {(r["method"], r["batch_size"], r["length"]) for r in fixed} == {
        (m, b, n) for m in ("hf_generate", "base", "nudging", "blendin") for b in (1, 2) for n in (4, 8)
    }
    for r in fixed:
        assert r["tokens"] == 2 * r["length"], "fixed length: every prompt decodes exactly `length` tokens"
        assert r["time_vs_hf_generate"] > 0 and r["per_token_vs_shortest"] > 0
    nudging = [r for r in fixed if r["method"] == "nudging"]
    assert all(0 < r["guidance_passes_per_token"] <= 1 for r in nudging)
    identity = [r for r in rows if r.get("mode") == "identity"]
    assert {r["method"] for r in identity} == {"base", "nudging", "blendin"}
    assert all(r["identical_outputs"] == 1.0 for r in identity), "float32: batch size does not change outputs"
    assert path.with_suffix(".md").is_file()


@needs_data
def test_bench_ragged_mode_decodes_real_items(tmp_path):
    run_cli(
        "blendin.bench",
        "--synthetic",
        "tiny",
        "--ragged",
        "gsm8k",
        "--n",
        "3",
        "--batch-sizes",
        "2",
        "--methods",
        "base",
        "--max-new-tokens",
        "12",
        "--out",
        str(tmp_path),
    )
    [path] = tmp_path.glob("ragged-*.json")
    [row] = json.loads(path.read_text())["rows"]
    assert row["mode"] == "ragged" and row["n"] == 3 and row["ragged_vs_fixed_time_per_token"] > 0


@pytest.mark.parametrize("other", [None, "compile=none"])
def test_speculative_rows_are_compared_with_step_by_step_rows_of_the_same_settings(other):
    from blendin.bench import _ratios

    def row(method, variant, seconds):
        return {"method": method, "batch_size": 1, "length": 8, "seconds": seconds, "tokens": 8,
                **({"variant": variant} if variant else {})}  # fmt: skip

    spec = ", ".join(filter(None, [other, "speculate=4"]))
    rows = _ratios([row("hf_generate", None, 1.0), row("base", other, 2.0), row("nudging", other, 4.0),
                    row("base", spec, 1.0), row("nudging", spec, 1.6)])  # fmt: skip
    fast = rows[-1]
    assert (fast["time_vs_step_base"], fast["time_vs_step_method"]) == (0.8, 0.4)
    assert "time_vs_step_base" not in rows[2]  # step-by-step rows have no such comparison
