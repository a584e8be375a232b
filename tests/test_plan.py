"""plan=true: every run a command would start, its state (finished, partial with its stored outputs,
copied, new) and an estimate from stored runs, without loading a model; and a config folder of one's
own on Hydra's search path, used end to end by a run and a sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from blendin import plan
from blendin.run import execute, run_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "blendin" / "conf"


def tiny(model_dirs, results, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(
            config_name="config",
            overrides=[
                "pair.name=tiny",
                f"pair.base.source={model_dirs['cross_base']}",
                f"pair.guidance.source={model_dirs['cross_guidance']}",
                "device=cpu",
                f"results_dir={results}",
                "benchmark=gsm8k",
                "benchmark.n=4",
                "benchmark.max_new_tokens=6",
                *overrides,
            ],
        )


def no_loading(*args, **kwargs):
    raise AssertionError("plan=true loaded a model")


def test_plan_tells_finished_partial_copied_and_new_runs_apart_and_estimates_from_stored_runs(
    model_dirs, tmp_path, monkeypatch
):
    done = tiny(model_dirs, tmp_path, "method=nudging")
    partial = tiny(model_dirs, tmp_path, "method=nudging", "method.tau=0.6")
    metrics = execute(done)
    execute(partial)
    path = run_dir(partial)  # a run killed after two outputs: two sample lines, no metrics.json
    (path / "metrics.json").unlink()
    lines = (path / "samples.jsonl").read_text().splitlines()[:2]
    (path / "samples.jsonl").write_text("".join(line + "\n" for line in lines))
    base = tiny(model_dirs, tmp_path, "method=base")
    base_again = tiny(model_dirs, tmp_path, "method=base", "pair.name=tiny2", "pair.guidance.source=elsewhere")
    new = tiny(model_dirs, tmp_path, "method=nudging", "benchmark.n=8")
    other = tiny(model_dirs, tmp_path, "method=blendin", "pair.name=tiny3")

    monkeypatch.setattr("blendin.pair.load_model", no_loading)
    monkeypatch.setattr(plan, "_METRICS", {})
    rows = plan.plan([done, partial, base, base_again, new, other])
    assert [r.status for r in rows] == ["done", "partial", "new", "reuse", "new", "new"]
    assert (rows[1].stored, rows[1].outputs) == (2, 4)
    assert rows[3].note == "copy of job 2"  # the same base run, decoded once by this command
    # the estimate of the new nudging run: seconds per token of the finished nudging run of the pair,
    # times 8 outputs at the share of the 6-token budget that run filled
    expected = metrics["wall_time_s"] / metrics["tokens_generated"] * 8 * 6 * (metrics["tokens_generated"] / (4 * 6))
    assert rows[4].seconds == pytest.approx(expected, rel=1e-6) and "1 finished nudging run(s)" in rows[4].basis
    assert rows[1].seconds == pytest.approx(expected / 8 * 2, rel=1e-6)  # two outputs left
    assert rows[2].seconds is not None and "other methods" in rows[2].basis  # no base run stored: nudging's
    assert rows[5].seconds is None and "no finished run of tiny3" in rows[5].basis
    text = plan.report(rows)
    assert "partial (2 of 4 stored)" in text and "copy of job 2" in text and "no estimate for job 5" in text
    assert "1 finished (skipped), 1 partial (resumed), 1 copied from a finished run, 3 new" in text
    assert text.endswith("plan=true: nothing was started and no model was loaded.")
    # force=true: a finished run would be deleted and decoded again
    [forced] = plan.plan([tiny(model_dirs, tmp_path, "method=nudging", "force=true")])
    assert forced.status == "new" and forced.stored == 0 and "force=true" in forced.note


def _command(*args, cwd=ROOT, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "blendin.run", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def test_plan_of_a_paper_grid_needs_no_model_and_starts_nothing(tmp_path):
    """The paper's Table 1 grid on a machine without its models: every run listed, the base runs that pairs
    share marked as copies, no job started, no sweep folder written."""
    done = _command("-m", "experiment=paper_table1", "plan=true", f"results_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.startswith("plan: 90 runs of this sweep") and out.count("\n  89 ") == 1
    assert "0 finished (skipped), 0 partial (resumed), 33 copied from a finished run, 57 new; 5700 outputs" in out
    assert "no finished run of qwen1.7b_llama8b" in out
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "runs").exists()


def test_an_own_config_folder_on_the_search_path_runs_and_sweeps(model_dirs, tmp_path):
    """A model and a pair of one's own, outside the project (as after `pip install .`), found through
    hydra.searchpath by a run, by the sweep's checks of every job, and by plan=true."""
    own = tmp_path / "myconf"
    (own / "model").mkdir(parents=True)
    (own / "pair").mkdir()
    (own / "model" / "my-base.yaml").write_text(f"source: {model_dirs['cross_base']}\nprompt_format: plain\n")
    (own / "model" / "my-guide.yaml").write_text(f"source: {model_dirs['cross_guidance']}\nprompt_format: chat\n")
    (own / "pair" / "mine.yaml").write_text(
        "defaults:\n  - /model@base: my-base\n  - /model@guidance: my-guide\n  - _self_\nname: mine\nlabel: mine\n"
    )
    common = [f"hydra.searchpath=[file://{own}]", "pair=mine", "device=cpu", f"results_dir={tmp_path / 'res'}"]
    common += ["benchmark=gsm8k", "benchmark.n=2", "benchmark.max_new_tokens=4"]
    done = _command("-m", *common, "method=base,nudging", cwd=tmp_path)  # not the checkout: as installed
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 done, 0 skipped" in done.stderr
    finished = sorted(p.parent.name for p in (tmp_path / "res" / "runs" / "mine" / "gsm8k").glob("*/metrics.json"))
    assert [name.split("-")[0] for name in finished] == ["base", "nudging"]
    assert json.loads((tmp_path / "res" / "runs" / "mine" / "gsm8k" / finished[1] / "metrics.json").read_text())[
        "guidance_model"
    ] == str(model_dirs["cross_guidance"])
    planned = _command(*common, "method=nudging", "plan=true", cwd=tmp_path)
    assert planned.returncode == 0 and "plan: 1 run\n" in planned.stdout and " done " in planned.stdout
