"""Multiruns (`python -m blendin.run -m ...` or `experiment=...`): check every job before any
starts, keep going when one fails, and report all of them at the end.

- `SweepReport.on_multirun_start` composes the config of every job of the sweep and checks it
  (`blendin.checks`), so a bad value in job 37 stops the sweep before job 1 loads a model.
- Each job runs through `run_job`, which never raises for a failed run: it logs the error and
  writes `<sweep dir>/<job>/job.json` (status, overrides, run directory, summary or error).
- `SweepReport.on_multirun_end` reads those files (the jobs may have run in other processes or on
  other machines: joblib, submitit), prints one line per job, writes `<sweep dir>/sweep.json`, and
  exits with status 1 if any job failed.
The callback is registered in conf/config.yaml (hydra.callbacks), so every launcher gets it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .errors import BlendinError
from .parallel import place

log = logging.getLogger("blendin.sweep")


def sweeping() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(cfg: DictConfig, execute, run_dir, summary_keys) -> dict:
    """Run one job of a multirun and record its outcome; a failure is recorded, not raised.

    execute(cfg) -> metrics runs it; run_dir(cfg) names its directory (both from blendin.run, which
    imports this module: the dependency goes one way)."""
    from .cli import setup_logging
    from .store import RunStore, atomic_write_json

    setup_logging()
    hydra_cfg = HydraConfig.get()
    _share_cpu_threads(hydra_cfg.launcher)
    record = {"job": hydra_cfg.job.num, "overrides": list(hydra_cfg.overrides.task)}
    if place().rank == 0:
        print(progress_line(hydra_cfg.job.num), file=sys.stderr, flush=True)
    try:
        path = run_dir(cfg)
        record["run_dir"] = str(path)
        finished_before = RunStore(path).finished and not cfg.force
        metrics = execute(cfg)
        record.update(
            status="skipped" if finished_before else "done", summary={k: metrics.get(k) for k in summary_keys}
        )
    except BlendinError as err:
        log.error("job %s (%s) failed: %s", record["job"], " ".join(record["overrides"]), err)
        record.update(status="failed", error=str(err))
    except Exception as err:  # a bug or a crash (CUDA OOM...): keep its traceback, let the sweep go on
        log.exception("job %s (%s) crashed", record["job"], " ".join(record["overrides"]))
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    from .parallel import ranks

    if ranks().main:  # under torchrun every process runs the job; rank 0 records it
        atomic_write_json(Path(hydra_cfg.runtime.output_dir) / "job.json", record)
    return record


# Set by SweepReport when a sweep starts in this process (the basic launcher); elsewhere jobs know only their number.
_SWEEP: dict[str, float | None] = {"total": None, "started": None}  # runs, time.monotonic() at the start


def progress_line(job: int) -> str:
    """ "[sweep] run 5 of 42, 3m10s so far, about 23m left" (the estimate: time per finished run so far)."""
    total, started = _SWEEP["total"], _SWEEP["started"]
    if not total or started is None:
        return f"[sweep] run {job + 1}"
    spent = time.monotonic() - started
    left = f", about {_minutes(spent / job * (total - job))} left" if job else ""
    return f"[sweep] run {job + 1} of {total}, {_minutes(spent)} so far{left}"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _share_cpu_threads(launcher) -> None:
    """Parallel jobs on one machine each take their share of the CPU threads instead of all of them
    (joblib: cores / n_jobs; submitit: the cpus_per_task it was given)."""
    import os

    import torch

    threads = launcher.get("cpus_per_task")
    if "joblib" in str(launcher.get("_target_", "")).lower():
        n_jobs = launcher.get("n_jobs") or 1
        n_jobs = (os.cpu_count() or 1) if n_jobs < 0 else n_jobs
        threads = max(1, (os.cpu_count() or 1) // n_jobs)
    if threads:
        torch.set_num_threads(int(threads))


class SweepReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        jobs = job_overrides(config)
        problems, cfgs = [], []
        searchpath = [o for o in config.hydra.overrides.hydra if o.startswith("hydra.searchpath")]  # own configs
        for number, overrides in enumerate(jobs):
            try:
                cfgs.append(check_job(config.hydra.job.config_name, searchpath + overrides))
            except BlendinError as err:
                problems.append(f"  job {number} ({' '.join(overrides)}): {err}")
        if problems:
            print(
                f"error: {len(problems)} of {len(jobs)} runs of this sweep have a bad config; nothing was "
                "started:\n" + "\n".join(problems),
                file=sys.stderr,
            )
            sys.exit(2)
        if config.get("plan"):  # print what would run, start nothing
            from . import plan

            if place().rank == 0:
                print(plan.report(plan.plan(cfgs), "this sweep"))
            sys.exit(0)
        if place().rank == 0:  # under torchrun every process runs the sweep; rank 0 speaks for it
            print(f"sweep: {len(jobs)} runs, configs checked; job records in {config.hydra.sweep.dir}", file=sys.stderr)
        _SWEEP.update(total=len(jobs), started=time.monotonic())

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from .store import atomic_write_json

        if place().rank != 0:  # under torchrun rank 0 records the jobs and reports them
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        records = sorted((json.loads(p.read_text()) for p in sweep_dir.glob("*/job.json")), key=lambda r: r["job"])
        expected = len(job_overrides(config))
        atomic_write_json(sweep_dir / "sweep.json", records)
        print(report(records, expected), file=sys.stderr)
        if len(records) < expected or any(r["status"] == "failed" for r in records):
            sys.exit(1)


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The override list of every job, as Hydra's basic sweeper builds them (params, then command line)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments = params + list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    overrides = OverridesParser.create().parse_overrides(arguments)
    return BasicSweeper.split_arguments(overrides, None)[0]


def check_job(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed and checked config of one job (a BlendinError names what is wrong)."""
    from hydra import compose
    from hydra.errors import HydraException

    from .checks import check_run_config
    from .cli import unknown_key
    from .errors import ConfigError

    try:
        cfg = compose(config_name=config_name, overrides=overrides)
    except HydraException as err:
        raise ConfigError(unknown_key(config_name, overrides, err) or str(err).replace("\n", " ")) from None
    check_run_config(cfg)
    return cfg


def report(records: list[dict], expected: int) -> str:
    """One line per job, naming only the overrides that differ between jobs."""
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed")}
    lines = [
        f"sweep finished: {counts['done']} done, {counts['skipped']} skipped (already finished), "
        f"{counts['failed']} failed"
        + (f", {expected - len(records)} never reported" if len(records) < expected else "")
    ]
    shared = set.intersection(*(set(r["overrides"]) for r in records)) if len(records) > 1 else set()
    if shared:
        lines.append(f"  every job: {' '.join(o for o in records[0]['overrides'] if o in shared)}")
    for r in records:
        own = " ".join(o for o in r["overrides"] if o not in shared)
        if r["status"] == "failed":
            detail = f"error: {r['error'].splitlines()[0] if r['error'] else ''}"
        else:
            detail = headline(r.get("summary") or {})
        lines.append(f"  [{r['status']:>7}] job {r['job']}: {own}: {detail}")
        if r["status"] != "failed" and r.get("run_dir"):
            lines.append(f"            {r['run_dir']}")
    return "\n".join(lines)


def headline(summary: dict) -> str:
    """A run's meaningful figures, as its method declares (`methods.Method.headline`): a probe never
    lets the guidance act, so its consult rate is shown, not a zero intervention rate; a teacher-forced
    run's output is given, so it has no score."""
    from .methods import REGISTRY

    spec = REGISTRY.get(summary.get("method", ""))  # "": no method of that name
    kind = spec.headline if spec else "score"
    if kind == "none":
        return "teacher forcing: no score (the output is the given reference)"
    if kind == "consult_rate":
        return f"consult_rate={_fmt(summary.get('consult_rate'))} (the guidance is asked, never followed)"
    passes = summary.get("pass_at_k") or {}
    repeated = ""
    if passes:  # several sampled outputs per item: the best-of-k and the vote beside the mean
        k = max(passes, key=int)
        repeated = f" pass@{k}={_fmt(passes[k])} majority={_fmt(summary.get('majority_score'))}"
    return (
        f"{summary.get('score_name')}={_fmt(summary.get('score'))}{repeated} "
        f"intervention={_fmt(summary.get('intervention_rate'))}"
    )


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
