"""Optional experiment tracking with Weights & Biases (`logger=wandb`, conf/logger/wandb.yaml).

A finished run logs its resolved config, its metrics (as summary values) and a table of its samples
(id, prompts, output, gold, prediction, score, tokens, intervention rate). The run directory under
results/ stays the record; W&B is a view of it. Offline unless `logger.mode=online`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)
SAMPLE_COLUMNS = (
    "id",
    "prompt_base",
    "prompt_guidance",
    "output",
    "gold",
    "prediction",
    "score",
    "n_tokens",
    "intervention_rate",
    "override_rate",
    "stop_reason",
)


def log_run(cfg, metrics: dict, records: list[dict], run_path: Path) -> str | None:
    """Log one finished run to W&B when its logger settings ask for it; return the local W&B run folder.
    cfg: the `runspec.RunSpec` (or a config)."""
    from .runspec import describe

    run_spec = describe(cfg)
    logger = run_spec.logger
    if logger is None or logger.get("name", "none") == "none" or logger.get("mode") == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError("logger=wandb needs the wandb package: pip install wandb") from None
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(logger["dir"]).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=logger["project"],
        entity=logger.get("entity"),
        mode=logger["mode"],
        dir=str(logger["dir"]),
        group=logger.get("group"),
        tags=list(logger.get("tags") or []),
        name=run_path.name,
        job_type=f"{run_spec.benchmark_name}/{metrics['method']}",
        reinit="finish_previous",
        config=run_spec.config,
    )
    try:
        run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))})
        run.summary.update(
            {"ci95_low": metrics["ci95"][0], "ci95_high": metrics["ci95"][1]} if metrics.get("ci95") else {}
        )
        table = wandb.Table(
            columns=list(SAMPLE_COLUMNS), data=[[_cell(r.get(c)) for c in SAMPLE_COLUMNS] for r in records]
        )
        run.log({"samples": table})
        local = str(Path(run.dir).parent)
    finally:
        run.finish()
    log.info("W&B (%s): %s", logger["mode"], local)
    return local


def _cell(value):
    return value if isinstance(value, (int, float, str, type(None))) else str(value)
