"""What a run or a sweep would do, before it does it: `python -m blendin.run [-m] ... plan=true`.

For every run the command would start it prints the run directory's name, whether that run is
finished (skipped), partial (how many outputs are stored) or new, whether a one-model run will be
copied from another pair's finished run instead of decoded, and an estimate of its decoding time.
Then the command exits: no model loads, no job starts, nothing is written.

The estimate comes from the finished runs stored under the same results folder: for the same pair and
method on the same device and dtype, their decoding seconds per generated token (`wall_time_s` /
`tokens_generated` in metrics.json) times the tokens this run will generate, assumed to fill the same
share of the token budget as theirs did. Where the method has no such run, the pair's other methods
are the basis (said so); where the pair has none on this device, there is no estimate (said so).
Model loading is not included.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from .identity import finished_twin, resolved_dtype, run_dir
from .methods import method as method_spec
from .models import resolve_device
from .sampling import sampling_from
from .store import RunStore


@dataclass
class Planned:
    job: int
    pair: str
    benchmark: str
    method: str
    path: Path
    outputs: int  # outputs the run has in all (items x samples per item)
    stored: int  # outputs already stored
    status: str  # done | partial | new | reuse
    note: str = ""
    seconds: float | None = None  # estimated decoding time of what is left
    basis: str = ""


def show(cfg: DictConfig) -> None:
    """`python -m blendin.run ... plan=true` without -m: check the config, print the one run's plan."""
    from .checks import check_run_config

    check_run_config(cfg)
    print(report(plan([cfg])))


def plan(cfgs: list[DictConfig]) -> list[Planned]:
    """The runs of these composed configs (one per job, in job order), each with its state and estimate."""
    rows: list[Planned] = []
    decoded_here: dict[str, int] = {}  # one-model runs this command decodes (name -> job): later pairs copy them
    for job, cfg in enumerate(cfgs):
        path = run_dir(cfg)
        store = RunStore(path)
        outputs = _items(cfg) * sampling_from(cfg.get("decoding")).samples
        stored = len(store.samples(repair=False))  # a partial run of several processes has only _parts/
        row = Planned(job, cfg.pair.name, cfg.benchmark.name, cfg.method.name, path, outputs, stored, "new")
        solo = method_spec(cfg.method.name).solo
        if store.finished and not cfg.get("force"):
            row.status, row.stored = "done", outputs
        elif cfg.get("force") and (store.finished or stored):
            row.status, row.stored, row.note = "new", 0, "force=true: deletes the stored run and starts over"
        elif stored:
            row.status = "partial"
        elif solo and (source := finished_twin(path)):
            row.status, row.stored, row.note = "reuse", outputs, f"copy of {source.parent.parent.name}'s"
        elif solo and path.name in decoded_here:
            row.status, row.stored, row.note = "reuse", outputs, f"copy of job {decoded_here[path.name]}"
        if row.status in ("new", "partial") and solo:
            decoded_here.setdefault(path.name, job)
        if row.status in ("new", "partial"):
            row.seconds, row.basis = _estimate(cfg, outputs - row.stored)
        rows.append(row)
    return rows


def _items(cfg) -> int:
    """Benchmark items of a run, from benchmark.n; the data is read only for n=full."""
    from .benchmarks import benchmark_from_config
    from .data import parse_n

    kind, k = parse_n(cfg.benchmark.n)
    if kind != "all" and k is not None:
        return k
    return len(benchmark_from_config(cfg.benchmark).samples(cfg.benchmark.n))


def _estimate(cfg, outputs: int) -> tuple[float | None, str]:
    """(seconds, what they rest on) for decoding `outputs` outputs of this run; (None, why not) without a basis."""
    device = str(resolve_device(cfg.device, strict=False))
    dtype = resolved_dtype(cfg)
    finished = [m for m in _stored_metrics(Path(cfg.results_dir)) if m.get("pair") == cfg.pair.name]
    finished = [m for m in finished if m.get("device") == device and m.get("dtype") == dtype]
    same = [m for m in finished if m.get("method") == cfg.method.name]
    basis = same or finished
    if not basis:
        return None, f"no finished run of {cfg.pair.name} on {device} ({dtype}) under {cfg.results_dir}/runs"
    tokens = sum(m["tokens_generated"] for m in basis)
    budget = sum(m["max_new_tokens"] * m["n_samples"] * m.get("samples_per_item", 1) for m in basis)
    seconds_per_token = sum(m["wall_time_s"] for m in basis) / tokens
    share = tokens / budget  # the share of the token budget their outputs filled
    seconds = seconds_per_token * outputs * cfg.benchmark.max_new_tokens * share
    which = f"{cfg.method.name}" if same else "other methods (none of this one)"
    return seconds, f"{len(basis)} finished {which} run(s) of the pair on {device}"


_METRICS: dict[Path, list[dict]] = {}


def _stored_metrics(results: Path) -> list[dict]:
    """metrics.json of every finished run under results/runs/ that can be a basis (read once)."""
    if results not in _METRICS:
        found = []
        for path in sorted(results.glob("runs/*/*/*/metrics.json")):
            try:
                m = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            keys = ("tokens_generated", "wall_time_s", "max_new_tokens", "n_samples")
            if all(isinstance(m.get(k), (int, float)) and m[k] > 0 for k in keys) and not m.get("reused_from"):
                found.append(m)
        _METRICS[results] = found
    return _METRICS[results]


def report(rows: list[Planned], command: str = "") -> str:
    """The plan as a table and a summary, for stdout."""
    lines = [f"plan: {len(rows)} run{'s' * (len(rows) != 1)}" + (f" of {command}" if command else "")]
    header = ("job", "pair", "benchmark", "run", "status", "outputs to decode", "estimate")
    table = [header]
    for r in rows:
        state = {"partial": f"partial ({r.stored} of {r.outputs} stored)", "reuse": r.note}.get(r.status, r.status)
        estimate = "-" if r.status in ("done", "reuse") else _duration(r.seconds)
        if r.seconds is not None and "other methods" in r.basis:
            estimate += "*"
        table.append((str(r.job), r.pair, r.benchmark, r.path.name, state, str(r.outputs - r.stored), estimate))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines += [f"  job {r.job}: {r.note}" for r in rows if r.note and r.status != "reuse"]
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "partial", "reuse", "new")}
    todo = [r for r in rows if r.status in ("new", "partial")]
    known = [r for r in todo if r.seconds is not None]
    lines.append(
        f"summary: {counts['done']} finished (skipped), {counts['partial']} partial (resumed), "
        f"{counts['reuse']} copied from a finished run, {counts['new']} new; "
        f"{sum(r.outputs - r.stored for r in todo)} outputs to decode"
    )
    if todo:
        total = sum(r.seconds for r in known if r.seconds is not None)
        estimate = f"estimated decoding time: {_duration(total)} for {len(known)} of the {len(todo)} runs to decode"
        if not known:
            estimate = f"estimated decoding time: no basis for any of the {len(todo)} runs to decode (below)"
        else:
            others = any("other methods" in r.basis for r in known)
            estimate += (
                " (seconds per generated token of finished runs of the same pair and method on this device, "
                "times the tokens left, at the share of the budget those runs filled"
                + ("; * marks those resting on the pair's other methods" if others else "")
                + "; model loading not included)"
            )
        lines.append(estimate)
        for reason in sorted({r.basis for r in todo if r.seconds is None}):
            jobs = [str(r.job) for r in todo if r.seconds is None and r.basis == reason]
            lines.append(f"no estimate for job{'s' * (len(jobs) > 1)} {_span(jobs)}: {reason}")
    lines.append("plan=true: nothing was started and no model was loaded.")
    return "\n".join(lines)


def _span(jobs: list[str]) -> str:
    return ", ".join(jobs) if len(jobs) <= 8 else f"{', '.join(jobs[:6])}, ... ({len(jobs)} jobs)"


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "no basis"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = seconds / 60
    return f"{minutes:.0f}m" if minutes < 60 else f"{int(minutes // 60)}h{int(minutes % 60):02d}m"
