"""Run one (pair, benchmark, method) and store it: `python -m blendin.run [pair=P] benchmark=B
method=M [method.tau=T] benchmark.n=N benchmark.max_new_tokens=K results_dir=DIR [force=true]
[judge=openai|local]`.

Writes DIR/runs/<pair>/<benchmark>/<run_name>/ (see `blendin.store`). The run name spells out the
method, its parameters and the subset, plus a short hash of everything that shapes the outputs, so
two different runs never share a directory and the same command finds its own run again.
Config: conf/config.yaml.
"""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .benchmarks import Benchmark, get_benchmark
from .checks import check_run_config
from .cli import call
from .data import REPO_ROOT
from .judges import make_judge
from .models import resolve_device, resolve_dtype
from .pair import Pair, pair_spec
from .policies import SOLO_METHODS
from .scoring import mean
from .store import RunStore, atomic_write_text
from .sweep import run_job, sweeping
from .tracking import log_run

log = logging.getLogger("blendin.run")


def run_name(cfg: DictConfig) -> str:
    """<method>-<params>-n<N>-s<seed>-<hash of everything that shapes the outputs>.

    A run of one model alone (base, guidance, aligned) hashes only that model, so pairs that share
    a base model give their base runs the same name, and a finished one is reused (see `_reuse`).
    """
    method = OmegaConf.to_container(cfg.method, resolve=True)
    params = "".join(f"-{k}{v}" for k, v in method.items() if k != "name")
    pair = OmegaConf.to_container(cfg.pair, resolve=True)
    roles = (method["name"],) if method["name"] in SOLO_METHODS else ("base", "guidance")
    models = {role: pair.get(role) for role in roles}
    shaping = {"pair": models, "method": method,
               "dtype": str(resolve_dtype(cfg.dtype, resolve_device(cfg.device, strict=False))),
               "benchmark": {k: v for k, v in OmegaConf.to_container(cfg.benchmark, resolve=True).items()
                             if k not in ("data_dir", "source")}}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
    return f"{method['name']}{params}-n{cfg.benchmark.n}-s{cfg.benchmark.seed}-{digest}".replace("/", "_")


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / "runs" / cfg.pair.name / cfg.benchmark.name / run_name(cfg)


def load_benchmark(cfg_benchmark) -> Benchmark:
    return get_benchmark(cfg_benchmark.name, data_dir=cfg_benchmark.get("data_dir"),
                         source=cfg_benchmark.get("source", "auto"), seed=cfg_benchmark.get("seed", 0))


def execute(cfg: DictConfig, pair: Pair | None = None) -> dict:
    """Decode what is not yet stored, score, and write metrics.json; return the metrics.

    The config is checked first, so a bad value fails before any data or model loads.
    """
    check_run_config(cfg)
    benchmark = load_benchmark(cfg.benchmark)
    samples = benchmark.samples(cfg.benchmark.n)
    judge = make_judge(cfg.get("judge"))
    store = RunStore(run_dir(cfg))
    with store.lock():
        if store.finished and not cfg.force:
            log.info("finished run, skipped (force=true to redo): %s", store.path)
            return json.loads(store.metrics_path.read_text())
        if cfg.force:
            store.reset()
        atomic_write_text(store.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        done = {r["id"] for r in store.samples()}
        store.prune_parts(done)
        pending = [s for s in samples if s.id not in done]
        reused = _reuse(cfg, store) if pending and not done else None
        if pending and not reused:
            log.info("%s: %d of %d samples to decode -> %s", store.path.name, len(pending), len(samples), store.path)
            _decode(cfg, pair or shared_pair(cfg), OmegaConf.to_container(cfg.method, resolve=True), pending, store)
        metrics = finish(store, benchmark, samples, judge, cfg, reused_from=reused)
    log_run(cfg, metrics, store.samples(), store.path)
    return metrics


def _reuse(cfg: DictConfig, store: RunStore) -> str | None:
    """For a one-model run (base, guidance, aligned): copy the outputs of the same finished run
    stored under another pair that shares the model, instead of decoding them again."""
    if cfg.method.name not in SOLO_METHODS:
        return None
    for metrics_path in sorted(store.path.parents[2].glob(f"*/{store.path.parent.name}/{store.path.name}/metrics.json")):
        source = metrics_path.parent
        if source != store.path and (source / "tokens.parquet").is_file():
            store.copy_outputs_from(source)
            log.info("%s: outputs reused from %s (same model, benchmark and settings)", store.path.name, source)
            return str(source)
    return None


_PAIRS: dict[str, Pair] = {}


def shared_pair(cfg: DictConfig) -> Pair:
    """One Pair per (pair config, device, dtype) in this process: the runs of a sweep that share a
    pair load its models once (a Pair loads each model on first use)."""
    key = json.dumps([OmegaConf.to_container(cfg.pair, resolve=True), cfg.device, cfg.dtype], sort_keys=True)
    if key not in _PAIRS:
        _PAIRS.clear()  # keep one pair in memory: a sweep over pairs should not pile them up
        _PAIRS[key] = Pair(pair_spec(cfg.pair), device=cfg.device, dtype=cfg.dtype)
    return _PAIRS[key]


def _decode(cfg, pair: Pair, method: dict, pending, store: RunStore) -> None:
    from tqdm import tqdm

    decoder = pair.decoder(method)
    stop = list(cfg.benchmark.get("stop") or [])
    bar = tqdm(total=len(pending), desc=f"{cfg.benchmark.name}/{method['name']}", unit="sample", file=sys.stderr)
    totals = {"tokens": 0, "applied": 0, "start": time.perf_counter(), "last": time.perf_counter()}

    def on_batch(indices, generations):
        now = time.perf_counter()
        seconds = (now - totals["last"]) / len(generations)
        totals["last"] = now
        records, trace = [], {}
        for i, gen in zip(indices, generations):
            sample = pending[i]
            records.append(_record(sample, gen, seconds, decoder))
            for key, values in gen.trace.items():
                trace.setdefault(key, []).extend(values)
            trace.setdefault("sample_id", []).extend([sample.id] * gen.n_tokens)
            totals["tokens"] += gen.n_tokens
            totals["applied"] += gen.n_applied
        store.append(records, trace)
        bar.update(len(generations))
        bar.set_postfix(tok_s=f"{totals['tokens'] / (now - totals['start']):.1f}",
                        intervention=f"{totals['applied'] / max(1, totals['tokens']):.3f}")

    decoder.generate([s.prompt for s in pending], max_new_tokens=cfg.benchmark.max_new_tokens, stop_strings=stop,
                     batch_size=cfg.batch_size, on_batch=on_batch)
    bar.close()


def _record(sample, gen, seconds: float, decoder) -> dict:
    guidance = decoder.guidance
    return {
        "id": sample.id,
        "prompt_base": decoder.lead.prompt_text(sample.prompt),
        "prompt_guidance": guidance.prompt_text(sample.prompt) if guidance else None,
        "output": gen.text, "stop_reason": gen.stop_reason, "n_tokens": gen.n_tokens,
        "n_interventions": gen.n_applied, "n_overrides": gen.n_overrides,
        "intervention_rate": gen.intervention_rate, "override_rate": gen.override_rate, "gen_seconds": seconds,
    }


def finish(store: RunStore, benchmark: Benchmark, samples, judge, cfg, reused_from: str | None = None) -> dict:
    """Score the stored outputs (rule-based or judge) and write the final files."""
    by_id = {r["id"]: r for r in store.samples()}
    records = []
    for sample in samples:
        record = dict(by_id[sample.id])
        for key in [k for k in record if k.startswith("judge_")] + ["prediction", "score"]:
            record.pop(key, None)
        record.update(gold=sample.gold, **benchmark.score(sample, record["output"], judge))
        records.append(record)
    summary = benchmark.summarize(records)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    tokens = sum(r["n_tokens"] for r in records)
    seconds = sum(r["gen_seconds"] for r in records)
    metrics = {
        "pair": cfg.pair.name, "base_model": cfg.pair.base.source, "guidance_model": cfg.pair.guidance.source,
        "benchmark": cfg.benchmark.name, "method": method["name"], "tau": method.get("tau"),
        "alpha": method.get("alpha"), "top_k": method.get("top_k"), "method_params": method,
        "n_samples": len(records), "seed": cfg.benchmark.seed, "max_new_tokens": cfg.benchmark.max_new_tokens,
        **summary,
        "intervention_rate": mean([r["intervention_rate"] for r in records]),
        "override_rate": mean([r["override_rate"] for r in records]),
        "tokens_generated": tokens, "wall_time_s": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 3) if seconds > 0 else None,
        "judge": getattr(judge, "name", None), "reused_from": reused_from, "git_commit": _git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    store.finalize(records, metrics)
    return metrics


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


SUMMARY_KEYS = ("pair", "benchmark", "method", "n_samples", "score", "score_name", "ci95", "intervention_rate",
                "override_rate", "tokens_per_s")


@hydra.main(version_base=None, config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    if sweeping():  # one job of a multirun: a failure is recorded and reported at the end, not raised
        return run_job(cfg, execute, SUMMARY_KEYS)
    metrics = call(execute, cfg)
    print(json.dumps({k: metrics.get(k) for k in SUMMARY_KEYS}))


if __name__ == "__main__":
    main()
