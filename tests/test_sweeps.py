"""Multiruns and reliability, through the real command line (`python -m blendin.run`) on tiny models:
complete run directories from a sweep (basic, joblib and submitit_local launchers), a failed run that
does not stop the others, a bad value that stops a sweep before anything runs, and a run killed with
SIGKILL at two moments that, started again, ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from blendin.data import data_dir

pytestmark = pytest.mark.skipif(not data_dir().exists(), reason="no benchmark data directory")
REPO = Path(__file__).resolve().parents[1]


def command(model_dirs, results: Path, *overrides, multirun: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "blendin.run",
        *(["-m"] if multirun else []),
        "pair.name=tiny",
        f"pair.base.source={model_dirs['cross_base']}",
        f"pair.guidance.source={model_dirs['cross_guidance']}",
        "device=cpu",
        f"results_dir={results}",
        *overrides,
    ]


def run_cli(args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def finished_runs(results: Path) -> dict[tuple[str, str], Path]:
    runs = {}
    for metrics in results.glob("runs/tiny/*/*/metrics.json"):
        m = json.loads(metrics.read_text())
        runs[(m["benchmark"], m["method"])] = metrics.parent
    return runs


def assert_metrics_recompute(path: Path) -> None:
    metrics = json.loads((path / "metrics.json").read_text())
    samples = read_jsonl(path / "samples.jsonl")
    assert metrics["n_samples"] == len(samples) == 3
    assert metrics["score"] == pytest.approx(sum(s["score"] for s in samples) / len(samples))
    assert metrics["intervention_rate"] == pytest.approx(
        sum(s["n_interventions"] / s["n_tokens"] for s in samples) / len(samples)
    )
    assert metrics["tokens_generated"] == sum(s["n_tokens"] for s in samples)
    tokens = pd.read_parquet(path / "tokens.parquet")
    assert len(tokens) == metrics["tokens_generated"]
    assert tokens.groupby("sample_id")["applied"].sum().to_dict() == {s["id"]: s["n_interventions"] for s in samples}


# submitit_local only with the slow tests: the SLURM test below runs the same submitit code path
@pytest.mark.parametrize("launcher", ["basic", "joblib", pytest.param("submitit_local", marks=pytest.mark.slow)])
def test_a_sweep_writes_one_complete_run_directory_per_combination(model_dirs, tmp_path, launcher):
    extra = {
        "basic": [],
        "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        "submitit_local": ["hydra/launcher=submitit_local"],
    }[launcher]
    done = run_cli(
        command(
            model_dirs,
            tmp_path,
            "benchmark=gsm8k,xstest",
            "method=nudging,blendin",
            "benchmark.n=3",
            "benchmark.max_new_tokens=8",
            *extra,
            multirun=True,
        )
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = finished_runs(tmp_path)
    assert set(runs) == {(b, m) for b in ("gsm8k", "xstest") for m in ("nudging", "blendin")}
    for path in runs.values():
        assert_metrics_recompute(path)
    report = json.loads(next(tmp_path.glob("multirun/*/sweep.json")).read_text())
    assert [r["status"] for r in report] == ["done"] * 4
    assert "sweep finished: 4 done, 0 skipped (already finished), 0 failed" in done.stderr


def test_a_failed_run_does_not_stop_the_sweep_and_is_reported_at_the_end(model_dirs, tmp_path):
    # the guidance model is missing: base runs work, nudging runs fail when they load it
    args = command(
        model_dirs,
        tmp_path,
        "benchmark=gsm8k,xstest",
        "method=nudging,base",
        "benchmark.n=3",
        "benchmark.max_new_tokens=8",
        f"pair.guidance.source={tmp_path / 'missing'}",
        multirun=True,
    )
    done = run_cli(args)
    assert done.returncode == 1
    assert set(finished_runs(tmp_path)) == {("gsm8k", "base"), ("xstest", "base")}
    assert "sweep finished: 2 done, 0 skipped (already finished), 2 failed" in done.stderr
    assert (
        f"[ failed] job 0: benchmark=gsm8k method=nudging: error: model folder '{tmp_path / 'missing'}' "
        "does not exist" in done.stderr
    )
    report = json.loads(next(tmp_path.glob("multirun/*/sweep.json")).read_text())
    assert [r["status"] for r in report] == ["failed", "done", "failed", "done"]
    again = run_cli(args)  # the finished runs are skipped the second time
    assert "0 done, 2 skipped (already finished), 2 failed" in again.stderr


def test_a_bad_value_anywhere_in_a_sweep_stops_it_before_any_run_starts(model_dirs, tmp_path):
    done = run_cli(
        command(
            model_dirs,
            tmp_path,
            "benchmark=gsm8k",
            "method=nudging",
            "method.tau=0.3,-1",
            "benchmark.n=3",
            multirun=True,
        )
    )
    assert done.returncode == 2
    assert "1 of 2 runs of this sweep have a bad config; nothing was started" in done.stderr
    assert "method.tau=-1.0 is out of range" in done.stderr
    assert not (tmp_path / "runs").exists()


def _kill_when(proc: subprocess.Popen, samples: Path, lines: int) -> int:
    """SIGKILL `proc` as soon as samples.jsonl holds `lines` lines; return how many it held."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if samples.is_file() and samples.read_bytes().count(b"\n") >= lines:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return samples.read_bytes().count(b"\n")
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.002)
    proc.kill()
    pytest.fail("the run never wrote its samples")


def test_a_run_killed_twice_with_sigkill_resumes_to_the_uninterrupted_result(model_dirs, tmp_path):
    settings = ("benchmark=gsm8k", "method=blendin", "benchmark.n=8", "benchmark.max_new_tokens=48", "batch_size=1")
    whole = run_cli(command(model_dirs, tmp_path / "whole", *settings))
    assert whole.returncode == 0, whole.stderr[-3000:]
    [reference] = finished_runs(tmp_path / "whole").values()

    args = command(model_dirs, tmp_path / "cut", *settings)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    samples = None
    for kill_after in (2, 5):  # two kills, at different points of the run
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples = samples or _wait_for_run_dir(tmp_path / "cut", proc) / "samples.jsonl"
        held = _kill_when(proc, samples, kill_after)
        assert kill_after <= held < 8 and not (samples.parent / "metrics.json").exists()
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{8 - held} of 8 samples to decode" in resumed.stderr

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "gen_seconds"} for r in rows]

    assert strip(read_jsonl(samples)) == strip(read_jsonl(reference / "samples.jsonl"))
    assert pd.read_parquet(samples.parent / "tokens.parquet").equals(pd.read_parquet(reference / "tokens.parquet"))

    def timeless(m):
        return {k: v for k, v in m.items() if k not in ("wall_time_s", "tokens_per_s", "created_at", "n_sessions")}

    assert timeless(json.loads((samples.parent / "metrics.json").read_text())) == timeless(
        json.loads((reference / "metrics.json").read_text())
    )
    assert not (samples.parent / "_parts").exists()


def _wait_for_run_dir(results: Path, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        found = list(results.glob("runs/tiny/gsm8k/*/config.yaml"))
        if found:
            return found[0].parent
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    pytest.fail("no run directory appeared")


def test_the_slurm_launcher_config_submits_a_valid_array_job(model_dirs, tmp_path):
    """hydra/launcher=slurm end to end against stand-ins for sbatch/srun/sacct (tests/fake_slurm/),
    which run the array tasks here: our sbatch options reach the script, and the runs complete."""
    fake = REPO / "tests" / "fake_slurm"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "FAKE_SLURM_LOG": str(tmp_path),
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
    }
    args = command(
        model_dirs,
        tmp_path,
        "benchmark=gsm8k,xstest",
        "method=nudging",
        "benchmark.n=3",
        "benchmark.max_new_tokens=8",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=testq",
        multirun=True,
    )
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(finished_runs(tmp_path)) == {("gsm8k", "nudging"), ("xstest", "nudging")}
    [script] = list(tmp_path.glob("submitted-*.sh"))
    lines = script.read_text().splitlines()
    for flag in (
        "--partition=testq",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=240",
        "--array=0-1%2",
        "--job-name=blendin",
    ):
        assert f"#SBATCH {flag}" in lines, flag
    assert "export PYTHONUNBUFFERED=1" in lines
