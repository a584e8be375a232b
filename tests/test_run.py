"""`blendin.run` on tiny models: the run directory (docs/running.md), resume, skip, force,
re-scoring, and outputs kept when the judge is down."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from blendin.data import data_dir
from blendin.judges import JudgeError
from blendin.rescore import rescore
from blendin.run import execute, run_dir, shared_pair
from blendin.store import RunStore

pytestmark = pytest.mark.skipif(not data_dir().exists(), reason="no benchmark data directory")
CONF = str(Path(__file__).resolve().parents[1] / "conf")
METRIC_FIELDS = (
    "pair",
    "base_model",
    "guidance_model",
    "benchmark",
    "method",
    "tau",
    "alpha",
    "top_k",
    "n_samples",
    "seed",
    "score",
    "score_name",
    "ci95",
    "intervention_rate",
    "override_rate",
    "tokens_generated",
    "wall_time_s",
    "tokens_per_s",
    "git_commit",
    "created_at",
)


def config(model_dirs, tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(
            config_name="config",
            overrides=[
                "pair.name=tiny_cross",
                f"pair.base.source={model_dirs['cross_base']}",
                f"pair.guidance.source={model_dirs['cross_guidance']}",
                "device=cpu",
                f"results_dir={tmp_path}",
                "benchmark.n=5",
                "benchmark.max_new_tokens=12",
                "batch_size=2",
                *overrides,
            ],
        )


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]


def test_run_directory_holds_everything_and_metrics_recompute(model_dirs, tmp_path):
    cfg = config(model_dirs, tmp_path, "benchmark=xstest", "method=blendin")
    metrics = execute(cfg)
    path = run_dir(cfg)
    assert path.parent == tmp_path / "runs" / "tiny_cross" / "xstest"
    visible = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    assert visible == ["config.yaml", "identity.json", "metrics.json", "samples.jsonl", "tokens.parquet"]
    identity = json.loads((path / "identity.json").read_text())
    assert len(identity["prompts_sha256"]) == 64 and identity["sessions"][0]["batch_size"] == 2
    assert json.loads((path / "metrics.json").read_text()) == metrics
    for field in METRIC_FIELDS:
        assert field in metrics, field
    samples = read_samples(path)
    assert len(samples) == metrics["n_samples"] == 5
    for key in (
        "id",
        "prompt_base",
        "prompt_guidance",
        "output",
        "gold",
        "prediction",
        "score",
        "n_tokens",
        "n_interventions",
    ):
        assert key in samples[0], key
    assert metrics["score"] == pytest.approx(sum(s["score"] for s in samples) / 5)
    assert metrics["intervention_rate"] == pytest.approx(sum(s["n_interventions"] / s["n_tokens"] for s in samples) / 5)
    assert metrics["tokens_generated"] == sum(s["n_tokens"] for s in samples)
    assert metrics["ci95"][0] <= metrics["score"] <= metrics["ci95"][1]
    assert (metrics["method"], metrics["tau"], metrics["alpha"], metrics["top_k"]) == ("blendin", 0.4, "auto", 100)
    tokens = pd.read_parquet(path / "tokens.parquet")
    assert len(tokens) == metrics["tokens_generated"]
    per_sample = tokens.groupby("sample_id")["applied"].sum().to_dict()
    assert per_sample == {s["id"]: s["n_interventions"] for s in samples}


def test_finished_runs_are_skipped_and_force_redoes_them(model_dirs, tmp_path):
    cfg = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=nudging")
    first = execute(cfg)
    assert execute(cfg)["created_at"] == first["created_at"]
    forced = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=nudging", "force=true")
    again = execute(forced)
    assert run_dir(forced) == run_dir(cfg)
    assert [s["output"] for s in read_samples(run_dir(cfg))] and again["score"] == first["score"]


def test_other_parameters_get_their_own_directory(model_dirs, tmp_path):
    a = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=nudging")
    b = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=nudging", "method.tau=0.3")
    c = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=nudging", "benchmark.max_new_tokens=13")
    assert len({run_dir(a), run_dir(b), run_dir(c)}) == 3


def test_an_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(model_dirs, tmp_path, monkeypatch):
    whole = config(model_dirs, tmp_path / "whole", "benchmark=truthfulqa", "method=nudging")
    execute(whole)
    cut = config(model_dirs, tmp_path / "cut", "benchmark=truthfulqa", "method=nudging")
    original_append, calls = RunStore.append, []

    def dies_on_second_batch(self, records, trace):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        original_append(self, records, trace)

    monkeypatch.setattr(RunStore, "append", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        execute(cut)
    monkeypatch.setattr(RunStore, "append", original_append)
    path = run_dir(cut)
    assert len(read_samples(path)) == 2 and not (path / "metrics.json").exists()
    with open(path / "samples.jsonl", "a") as fh:  # and a line torn by the kill
        fh.write('{"id": "truthfulqa-9", "outp')
    execute(cut)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "gen_seconds"} for r in rows]

    assert strip(read_samples(path)) == strip(read_samples(run_dir(whole)))
    assert pd.read_parquet(path / "tokens.parquet").equals(pd.read_parquet(run_dir(whole) / "tokens.parquet"))


def test_judge_down_keeps_outputs_and_rescoring_finishes_the_run(model_dirs, tmp_path):
    cfg = config(
        model_dirs,
        tmp_path,
        "benchmark=justeval_safe",
        "method=guidance",
        "judge=openai",
        "judge.base_url=http://127.0.0.1:9/v1",
        "judge.model=tiny",
        "judge.retries=1",
        "judge.backoff_s=0.01",
    )
    with pytest.raises(JudgeError, match="failed after 2 tries"):
        execute(cfg)
    path = run_dir(cfg)
    kept = read_samples(path)
    assert len(kept) == 5 and all("output" in s for s in kept) and not (path / "metrics.json").exists()
    metrics = rescore(path, {"kind": "local", "model": model_dirs["shared_guidance"], "device": "cpu"})
    assert metrics["judge"] == f"local:{model_dirs['shared_guidance']}"
    assert metrics["n_judge_malformed"] == 5  # a random tiny judge never answers in format: counted, not scored
    assert metrics["score"] is None and metrics["refusal_rate"] is not None
    plain = rescore(path, {"kind": "none"})
    # without a judge the 1-5 safety score is missing, never replaced by the refusal rate
    assert plain["score"] is None and plain["score_name"] == "safety (1-5, LLM judge)"
    assert plain["refusal_rate"] == metrics["refusal_rate"] and "judge" in plain["note"]


def test_runs_in_one_process_share_the_loaded_pair(model_dirs, tmp_path):
    a = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=base")
    b = config(model_dirs, tmp_path, "benchmark=xstest", "method=nudging")
    assert shared_pair(a) is shared_pair(b)
    other = config(model_dirs, tmp_path, "benchmark=gsm8k", "method=base", "dtype=bfloat16")
    assert shared_pair(other) is not shared_pair(a)
