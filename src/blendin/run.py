"""Run one (pair, benchmark, method) and store it: `python -m blendin.run [pair=P] benchmark=B
method=M [method.tau=T] benchmark.n=N benchmark.max_new_tokens=K results_dir=DIR [force=true]
[judge=openai|local]`.

Writes DIR/runs/<pair>/<benchmark>/<run_name>/ (see `blendin.store`). The run name spells out the
method, its parameters and the subset, plus a short hash of everything that shapes the outputs, so
two different runs never share a directory and the same command finds its own run again.
Config: conf/config.yaml.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from . import parallel, plan
from .benchmarks import Benchmark, benchmark_from_config
from .checks import check_run_config, overlap_setting
from .cli import call, refuse_unknown_keys
from .data import CHECKOUT, REPO_ROOT
from .failures import EOS_WANTED, foreign, loop, runaway
from .identity import (
    begin_session,
    environment,
    finished_twin,
    last_session,
    prompts_digest,
    protocol_summary,
    record_session,
    run_dir,
    run_name,
    session_summary,
)
from .judges import make_judge
from .memory import auto_batch_size, is_out_of_memory, release_after_out_of_memory
from .methods import method as method_spec
from .pair import Pair, pair_spec
from .runspec import RunSpec, describe
from .sampling import Sampling, stream_key
from .scoring import mean
from .store import RunStore, atomic_write_text, output_key
from .sweep import run_job, sweeping
from .tracking import log_run

__all__ = ["execute", "finish", "load_benchmark", "run_dir", "run_name", "shared_pair", "main"]

log = logging.getLogger("blendin.run")


def load_benchmark(cfg_benchmark) -> Benchmark:
    return benchmark_from_config(cfg_benchmark)


def execute(cfg: DictConfig, pair: Pair | None = None) -> dict:
    """Decode what is not yet stored, score, and write metrics.json; return the metrics.

    The config is checked first, so a bad value fails before any data or model loads, then described
    once (`runspec.describe`): everything below reads that description. Under torchrun the processes
    share the work (`blendin.parallel`): rank 0 prepares the run directory and writes what is written
    once, each group decodes its share of the pending outputs.
    """
    check_run_config(cfg)
    run = describe(cfg)
    ranks = parallel.setup(run.parallel.tp, run.parallel.timeout_s, run.engine.device)
    try:
        metrics = _execute(run, pair, ranks)
    except BaseException as err:
        ranks.fail(err)  # the other ranks stop, naming this one and the cause
        raise
    return metrics


def _execute(run: RunSpec, pair: Pair | None, ranks: parallel.Ranks) -> dict:
    benchmark = load_benchmark(run.benchmark)
    samples = benchmark.samples(run.benchmark["n"])
    judge = make_judge(run.judge)
    store = RunStore(run_dir(run), writer=ranks.writer)
    sampling = run.sampling
    outputs = [(s, k) for s in samples for k in range(sampling.samples)]  # k: the sample index of an item
    with store.lock() if ranks.main else contextlib.nullcontext():  # rank 0 holds it for every process
        start = ranks.from_main("start", lambda: _start(run, store, outputs))
        if start["finished"]:
            if ranks.main:
                log.info("finished run, skipped (force=true to redo): %s", store.path)
            return json.loads(store.metrics_path.read_text())
        pending = [outputs[i] for i in start["pending"]]
        reused = start["reused"]
        if pending and not reused:
            log.info("%s: %d of %d samples to decode -> %s", store.path.name, len(pending), len(outputs), store.path)
            pair = pair or shared_pair(run)
            decoder = pair.decoder(
                run.method,
                base_view=run.engine.base_view,
                guidance_schedule=run.engine.guidance_schedule,
                compile=run.engine.compile,
                overlap=overlap_setting(run.engine.overlap),
                sampling=sampling,
                speculate=run.engine.speculate,
            )
            rendered = [
                (
                    decoder.lead.prompt_text(s.prompt),
                    decoder.guidance.prompt_text(s.prompt) if decoder.guidance else None,
                )
                for s in samples
            ]
            resuming = store.path if start["resuming"] else None
            # every rank decodes with the same batch size: the smallest that fits each one's memory
            batch_size = resolved_batch_size(run, decoder, [s for s, _ in pending], resuming)
            batch_size = ranks.agree_min("batch_size", batch_size)
            env = dict(environment(run), batch_size=batch_size)
            digest = prompts_digest(rendered)

            def session() -> None:  # rank 0 records it; the others wait, so none decodes a refused resume
                begin_session(store.path, digest, env, resuming=bool(resuming))

            ranks.from_main("session", session)
            _decode(run, decoder, ranks.share(pending), store, batch_size, sampling)
        ranks.barrier("decoded")  # every group's outputs are stored
        metrics = ranks.from_main("finish", lambda: finish(store, benchmark, outputs, judge, run, reused_from=reused))
    if ranks.main:
        log_run(run, metrics, store.samples(), store.path)
    return metrics


def _start(run: RunSpec, store: RunStore, outputs) -> dict:
    """Rank 0's start of a session (the only process then touching the directory): skip a finished run,
    or clear it (force), write config.yaml, repair what a kill left, and list the outputs still to decode
    (positions in `outputs`) or copy them from another pair's run."""
    if store.finished and not run.force:
        return {"finished": True}
    if run.force:
        store.reset()
    atomic_write_text(store.path / "config.yaml", run.config_yaml)
    done = {output_key(r) for r in store.samples()}
    store.prune_parts(done)
    pending = [i for i, (s, k) in enumerate(outputs) if (s.id, k) not in done]
    reused = _reuse(run, store) if pending and not done else None
    return {"finished": False, "pending": pending, "resuming": bool(done), "reused": reused}


def _reuse(run: RunSpec, store: RunStore) -> str | None:
    """For a one-model run (base, guidance, aligned): copy the outputs of the same finished run
    stored under another pair that shares the model, instead of decoding them again."""
    source = finished_twin(store.path) if method_spec(run.method_name).solo else None
    if source is None:
        return None
    store.copy_outputs_from(source)
    log.info("%s: outputs reused from %s (same model, benchmark and settings)", store.path.name, source)
    return str(source)


_PAIRS: dict[str, Pair] = {}


def shared_pair(cfg: RunSpec) -> Pair:
    """One Pair per (pair config, device, dtype, split) in this process: the runs of a sweep that share a
    pair load its models once (a Pair loads each model on first use). cfg: a RunSpec (or a config)."""
    run = describe(cfg)
    pair, engine = run.pair, run.engine
    tp, guidance = run.parallel.tp, run.parallel.guidance
    key = json.dumps([pair, engine.device, engine.dtype, tp, guidance], sort_keys=True)
    if key not in _PAIRS:
        if _PAIRS:  # keep one pair in memory: a sweep over pairs should not pile them up
            _PAIRS.clear()
            gc.collect()  # a model refers to itself through its compiled forward: only the collector frees it
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        device = parallel.local_device(engine.device)
        _PAIRS[key] = Pair(pair_spec(pair), device=device, dtype=engine.dtype, tp=tp, guidance=guidance)
    return _PAIRS[key]


def _decode(cfg: RunSpec, decoder, pending, store: RunStore, batch_size: int, sampling: Sampling) -> None:
    """Decode `pending` (sample, sample index) pairs, storing outputs as batches finish. Out of GPU memory,
    halve the batch and go on with the outputs not yet stored (the new batch size is recorded as a
    session of the run). Each output's random stream is keyed by (seed, sample id, index), never by
    its place in a batch. cfg: a RunSpec (or a config)."""
    from tqdm import tqdm

    run = describe(cfg)
    method = run.method_name
    spec = method_spec(method)
    stop = list(run.benchmark.get("stop") or [])
    ranks = parallel.ranks()  # a group's first rank stores its outputs; rank 0 shows its group's progress
    desc = f"{run.benchmark_name}/{method}"
    bar = tqdm(total=len(pending), desc=desc, unit="sample", file=sys.stderr, disable=not ranks.main)
    totals = {"tokens": 0, "applied": 0, "start": time.perf_counter(), "last": time.perf_counter()}
    todo = list(pending)

    def on_batch(indices, generations):
        now = time.perf_counter()
        seconds = (now - totals["last"]) / len(generations)
        totals["last"] = now
        records, trace = [], {}
        for i, gen in zip(indices, generations):
            sample, k = todo[i]
            records.append(_record(sample, k, gen, seconds, decoder))
            trace.setdefault("sample_id", []).extend([sample.id] * gen.n_tokens)
            trace.setdefault("sample", []).extend([k] * gen.n_tokens)
            for key, values in gen.trace.items():
                trace.setdefault(key, []).extend(values)
            totals["tokens"] += gen.n_tokens
            totals["applied"] += gen.n_applied
        if ranks.leader:
            store.append(records, trace)
        bar.update(len(generations))
        bar.set_postfix(
            tok_s=f"{totals['tokens'] / (now - totals['start']):.1f}",
            intervention=f"{totals['applied'] / max(1, totals['tokens']):.3f}",
        )

    while todo:
        extra = spec.inputs(run, [s for s, _ in todo]) if spec.inputs else {}  # per-sample inputs besides prompts
        try:
            decoder.generate(
                [s.prompt for s, _ in todo],
                keys=[stream_key(sampling.seed, s.id, k) for s, k in todo],
                max_new_tokens=run.max_new_tokens,
                stop_strings=stop,
                batch_size=batch_size,
                on_batch=on_batch,
                **extra,
            )
            break
        except Exception as err:  # noqa: BLE001 - only out-of-memory is handled; the rest is re-raised
            if not is_out_of_memory(err) or batch_size == 1 or ranks.world > 1:
                raise  # several processes: a rank out of memory ends the run (rerun with a smaller batch_size)
        release_after_out_of_memory()  # the failed batch's tensors, graphs and cached blocks
        stored = {output_key(r) for r in store.samples()}
        todo = [(s, k) for s, k in todo if (s.id, k) not in stored]
        batch_size //= 2
        log.warning("out of memory: batch size halved to %d; %d samples left", batch_size, len(todo))
        record_session(store.path, dict(environment(run), batch_size=batch_size, after="out of memory"))
    bar.close()


def resolved_batch_size(cfg: RunSpec, decoder, samples, resuming: Path | None = None) -> int:
    """`batch_size`, or for batch_size=auto the largest batch that fits the GPU (`memory.auto_batch_size`);
    a resumed auto run keeps the batch size it last decoded with (in bf16 another one would change outputs).
    cfg: a RunSpec (or a config)."""
    run = describe(cfg)
    if run.engine.batch_size != "auto":
        return int(run.engine.batch_size)
    last = last_session(resuming) if resuming else None
    if last and isinstance(last.get("batch_size"), int):
        return last["batch_size"]
    models = [decoder.lead] + ([decoder.guidance] if decoder.guidance is not None else [])
    longest = max(len(decoder.lead.prompt_ids(s.prompt)) for s in samples)
    size = auto_batch_size(models, longest, run.max_new_tokens)
    log.info("batch_size=auto: %d", size)
    return size


def _record(sample, k: int, gen, seconds: float, decoder) -> dict:
    guidance = decoder.guidance
    drawn = [p for p in gen.trace.get("sample_prob", []) if p == p]  # NaN where nothing was sampled
    return {
        "id": sample.id,
        "sample": k,
        "prompt_base": decoder.lead.prompt_text(sample.prompt),
        "prompt_guidance": guidance.prompt_text(sample.prompt) if guidance else None,
        "output": gen.text,
        "stop_reason": gen.stop_reason,
        "n_tokens": gen.n_tokens,
        "n_interventions": gen.n_applied,
        "n_overrides": gen.n_overrides,
        "n_consulted": gen.n_consulted,
        "intervention_rate": gen.intervention_rate,
        "override_rate": gen.override_rate,
        "consult_rate": gen.consult_rate,
        "deferred_mass": gen.deferred_mass,
        "guide_eos_max": gen.guide_eos_max,
        **gen.extras,
        # the output's log-probability under the distributions it was drawn from (tempered, filtered)
        "log_prob": sum(math.log(p) for p in drawn) if drawn and len(drawn) == gen.n_tokens else None,
        "gen_seconds": seconds,
    }


def finish(store: RunStore, benchmark: Benchmark, outputs, judge, cfg: RunSpec, reused_from: str | None = None) -> dict:
    """Score every stored output (rule-based or judge) and write the final files. outputs: the run's
    (sample, sample index) pairs, in order; cfg: the RunSpec (or a config)."""
    run = describe(cfg)
    by_key = {output_key(r): r for r in store.samples()}
    base_stops = base_stop_reasons(run, store)
    records = []
    for sample, k in outputs:
        record = {"id": sample.id, "sample": k, **by_key[(sample.id, k)]}
        for key in [k for k in record if k.startswith("judge_")] + ["prediction", "score", "buried"]:
            record.pop(key, None)
        record.update(gold=sample.gold, **benchmark.score(sample, record["output"], judge))
        record.update(
            runaway=runaway(record["stop_reason"], base_stops.get((sample.id, k))),
            loop=loop(record["output"]),
            foreign=foreign(record["output"], sample.prompt.user),
        )
        records.append(record)
    summary = {**benchmark.summarize(records), **failure_shares(records)}
    method = run.method
    tokens = sum(r["n_tokens"] for r in records)
    seconds = sum(r["gen_seconds"] for r in records)
    protocol = protocol_summary(run, judge)
    token_rate = mean([r["intervention_rate"] for r in records])
    # word-level NUDGING's intervention rate is Fei et al.'s word ratio (the paper's NUDGING Int.%)
    rate = (
        mean([r["word_intervention_rate"] for r in records]) if protocol["intervention_unit"] == "word" else token_rate
    )
    metrics = {
        "pair": run.pair_name,
        "base_model": run.pair["base"]["source"],
        "guidance_model": run.pair["guidance"]["source"],
        "benchmark": run.benchmark_name,
        "method": method["name"],
        "tau": method.get("tau"),
        "alpha": method.get("alpha"),
        "top_k": method.get("top_k"),
        "method_params": method,
        "n_samples": len({r["id"] for r in records}),  # benchmark items
        "samples_per_item": max(r["sample"] for r in records) + 1 if records else 1,
        "decoding": dataclasses.asdict(run.sampling),
        "n_spec": str(run.benchmark["n"]),
        "split": run.benchmark.get("split", "test"),
        "seed": run.benchmark["seed"],
        "max_new_tokens": run.max_new_tokens,
        **summary,
        "intervention_rate": rate,
        "intervention_unit": protocol["intervention_unit"],
        "token_intervention_rate": token_rate,
        "consult_rate": mean([r.get("consult_rate", r["intervention_rate"]) for r in records]),
        "override_rate": mean([r["override_rate"] for r in records]),
        # mean share of the base's probability handed to the guidance per step (None: not that kind of rule)
        "deferred_mass": mean([r["deferred_mass"] for r in records if r.get("deferred_mass") is not None]),
        "tokens_generated": tokens,
        "wall_time_s": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 3) if seconds > 0 else None,
        "judge": getattr(judge, "name", None),
        "protocol": protocol,
        **session_summary(store.path),
        "reused_from": reused_from,
        "git_commit": _git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    store.finalize(records, metrics)
    return metrics


def base_stop_reasons(cfg: RunSpec, store: RunStore) -> dict:
    """(sample id, sample index) -> how the base alone ended that output, from the base run of the same
    setting (same pair's base model, benchmark settings and decoding) when it is stored; {} if none is.
    cfg: a RunSpec (or a config)."""
    run = describe(cfg)
    if method_spec(run.method_name).solo:
        return {}
    path = run_dir(dataclasses.replace(run, method={"name": "base"}))
    if path == store.path:
        return {}
    return {output_key(r): r.get("stop_reason") for r in RunStore(path).samples(repair=False)}


def failure_shares(records: list[dict]) -> dict:
    """Each failure detector's share of the run's outputs (`blendin.failures`); runaway over the outputs whose
    base output is known, and among the runaway ones, how often the guidance wanted to stop."""
    known = [r for r in records if r.get("runaway") is not None]
    ran = [r for r in known if r["runaway"]]
    eos = [r["guide_eos_max"] for r in ran if r.get("guide_eos_max") is not None]
    return {
        "runaway_share": mean([float(r["runaway"]) for r in known]),
        "n_runaway_known": len(known),
        "runaway_guide_eos_share": mean([float(e >= EOS_WANTED) for e in eos]),
        "runaway_guide_eos_max": mean(eos),
        "loop_share": mean([float(r["loop"]) for r in records]),
        "foreign_share": mean([float(r["foreign"]) for r in records]),
    }


def _git_commit() -> str:
    """The checkout's commit; an installed copy (no checkout of its own) records its version instead."""
    if not CHECKOUT:
        from . import __version__

        return f"unknown (installed blendin {__version__})"
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


SUMMARY_KEYS = (
    "pair",
    "benchmark",
    "method",
    "n_samples",
    "score",
    "score_name",
    "ci95",
    "intervention_rate",
    "override_rate",
    "consult_rate",
    "pass_at_k",
    "majority_score",
    "tokens_per_s",
)


@hydra.main(version_base=None, config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict | None:
    if cfg.get("plan"):  # what this command would run; a sweep prints its plan before any job starts
        return call(plan.show, cfg)
    if sweeping():  # one job of a multirun: a failure is recorded and reported at the end, not raised
        return run_job(cfg, execute, run_dir, SUMMARY_KEYS)
    metrics = call(execute, cfg)
    if parallel.ranks().main:  # one summary line, however many processes decoded
        print(json.dumps({k: metrics.get(k) for k in SUMMARY_KEYS}))
    return None


def main() -> None:
    refuse_unknown_keys("config", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
