"""What makes a run the run it is: its name and directory, its protocol, and what a resume checks.

- The run NAME spells out the method, its parameters and the subset, plus a short hash of everything
  that shapes the outputs: the models the method uses (with their prompt formats and chat-template
  variables), the method, the benchmark settings that choose and prompt the items, the base view,
  and the resolved dtype. Settings that only change scoring (`refusal_classifier`, the judge) are
  left out, so `rescore` can apply them to the same outputs. The batch size is left out too: in
  float32 the outputs do not depend on it (the tests check batched = one by one).
- The rendered PROMPTS are part of a run's identity as well, but they need the tokenizers (chat
  templates), so they are checked when decoding starts: the first session stores their hash in
  `<run>/identity.json`, and a resume whose prompts differ (a chat template that writes today's
  date, a new template version) is refused instead of mixing two prompt versions in one run.
- Each decoding session (start or resume) records its environment: device, dtype, batch size, torch
  and transformers versions. A resume in reduced precision (bf16/fp16) with another batch size is
  refused, since batch shapes change bf16 results; in float32 it is allowed and recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from .errors import ConfigError
from .methods import method as method_spec
from .models import resolve_device, resolve_dtype
from .runspec import RunSpec, describe
from .sampling import Sampling
from .store import atomic_write_json

SCORING_ONLY_KEYS = ("data_dir", "source", "refusal_classifier")  # never change which outputs are decoded


def effective_pair(cfg) -> dict:
    """The pair config with the protocol applied (`runspec.with_protocol`); cfg: a config or a RunSpec."""
    return describe(cfg).pair


def _placeless(model: dict | None) -> dict | None:
    """A model's config without where it runs (`device`): the same model decodes the same outputs anywhere."""
    return {k: v for k, v in model.items() if k != "device"} if model else model


def resolved_dtype(cfg) -> str:
    engine = describe(cfg).engine
    return str(resolve_dtype(engine.dtype, resolve_device(engine.device, strict=False)))


def run_name(cfg: RunSpec) -> str:
    """<method>-<params>-n<N>-s<seed>-<hash of everything that shapes the outputs>; cfg: a RunSpec (or a
    config, described here).

    A run of one model alone (base, guidance, aligned) hashes only that model, so pairs that share
    a base model give their base runs the same name, and a finished one is reused.
    """
    run = describe(cfg)
    method = run.method
    params = "".join(f"-{k}{v}" for k, v in method.items() if k != "name")
    pair = run.pair
    spec = method_spec(method["name"])
    roles = spec.roles
    benchmark = {k: v for k, v in run.benchmark.items() if k not in SCORING_ONLY_KEYS}
    shaping: dict[str, object] = {
        "pair": {role: _placeless(pair.get(role)) for role in roles},
        "method": method,
        "dtype": resolved_dtype(run),
        "benchmark": benchmark,
    }
    if run.engine.base_view != "ids":  # left out at its default so that older run names stay valid
        shaping["base_view"] = run.engine.base_view
    sampling = run.sampling
    if not sampling.greedy:  # greedy runs keep the names they had before sampling existed
        shaping["decoding"] = dataclasses.asdict(sampling)
        if run.engine.speculate:  # the same distribution, other draws: other outputs
            shaping["speculate"] = run.engine.speculate
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
    subset = str(run.benchmark["n"]).replace(":", "")
    split = "" if run.benchmark.get("split", "test") == "test" else f"-{run.benchmark['split']}"
    drawn = "" if sampling.greedy else f"-{decoding_label(sampling)}"
    return f"{method['name']}{params}{drawn}-n{subset}{split}-s{run.benchmark['seed']}-{digest}".replace("/", "_")


def decoding_label(sampling: Sampling) -> str:
    """Sampling settings in a few characters: t0.7-p0.95-k40-x5-seed0 (p, k only when set)."""
    parts = [f"t{sampling.temperature:g}"]
    parts += [f"p{sampling.top_p:g}"] if sampling.top_p < 1 else []
    parts += [f"k{sampling.top_k}"] if sampling.top_k else []
    return "-".join(parts + [f"x{sampling.samples}", f"seed{sampling.seed}"])


def run_dir(cfg: RunSpec) -> Path:
    """<results_dir>/runs/<pair>/<benchmark>/<run name>; cfg: a RunSpec (or a config, described here)."""
    run = describe(cfg)
    return Path(run.results_dir) / "runs" / run.pair_name / run.benchmark_name / run_name(run)


def finished_twin(path: Path) -> Path | None:
    """A finished run of the same name stored under another pair: for a one-model run (base, guidance,
    aligned) the same model, benchmark and settings, so its outputs are this run's outputs."""
    for metrics in sorted(path.parents[2].glob(f"*/{path.parent.name}/{path.name}/metrics.json")):
        if metrics.parent != path and (metrics.parent / "tokens.parquet").is_file():
            return metrics.parent
    return None


def protocol_summary(cfg: RunSpec, judge=None) -> dict:
    """The settings behind a run's numbers, as the analysis labels them."""
    run = describe(cfg)
    benchmark = run.benchmark
    method = run.method
    spec = method_spec(method["name"])
    pair = run.pair
    summary = {
        "name": run.protocol.get("name", "ours"),
        "stop_strings": list(benchmark.get("stop") or []),
        "max_new_tokens": benchmark.get("max_new_tokens"),
        "subset_rule": benchmark.get("subset_rule", "seeded"),
        "split": benchmark.get("split", "test"),
        "base_view": "text" if spec.decoder == "words" else run.engine.base_view,
        "base_prompt": (pair.get("base") or {}).get("prompt_format", "plain"),
        "guidance_prompt": (pair.get("guidance") or {}).get("prompt_format", "chat"),
        "intervention_unit": spec.unit,
        "judge": getattr(judge, "name", None),
    }
    sampling = run.sampling
    if not sampling.greedy:  # absent for greedy runs, as in runs stored before sampling existed
        summary["decoding"] = decoding_label(sampling)
    for key in ("shuffle", "part", "refusal_classifier", "exclude_n"):
        if key in benchmark:
            summary[key] = benchmark[key]
    return summary


def environment(cfg: RunSpec) -> dict:
    import torch
    import transformers

    from .parallel import ranks

    run = describe(cfg)
    engine = run.engine
    env = {
        "device": str(resolve_device(engine.device, strict=False)),
        "dtype": resolved_dtype(run),
        "batch_size": engine.batch_size,
        "compile": engine.compile,
        "guidance_schedule": engine.guidance_schedule,
        "speculate": engine.speculate,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    guidance_device = (run.pair.get("guidance") or {}).get("device")
    if guidance_device:
        env["guidance_device"] = str(guidance_device)
    placed = ranks()
    if placed.world > 1:  # only where set, so that one-process sessions read as they always have
        env.update(processes=placed.world, tp=placed.tp)
    return env


def prompts_digest(rendered: list[tuple[str, str | None]]) -> str:
    """Hash of every sample's rendered prompts (base text, guidance text)."""
    return hashlib.sha256(json.dumps(rendered, ensure_ascii=False).encode()).hexdigest()


def begin_session(run_path: Path, digest: str, env: dict, resuming: bool) -> dict:
    """Record this decoding session in <run>/identity.json; refuse a resume that would mix outputs."""
    path = Path(run_path) / "identity.json"
    record = json.loads(path.read_text()) if path.is_file() else None
    if record is None or not resuming:
        record = {"prompts_sha256": digest, "sessions": []}
    elif record["prompts_sha256"] != digest:
        raise ConfigError(
            f"{run_path}: the rendered prompts differ from those this run started with (a chat template that "
            "writes today's date, or a changed template or tokenizer). Resuming would mix two prompt versions "
            "in one run. Fix: pin the template variables (e.g. chat_template_kwargs: {date_string: ...} in "
            "conf/model/), or start over with force=true"
        )
    else:
        latest = record["sessions"][-1] if record["sessions"] else env  # the batch size it last decoded with
        reduced = env["dtype"] in ("torch.bfloat16", "torch.float16")
        if reduced and latest.get("batch_size") != env["batch_size"]:
            raise ConfigError(
                f"{run_path} last decoded with batch_size={latest.get('batch_size')} in {env['dtype']}; in reduced "
                "precision the batch size changes the outputs, so resuming with batch_size="
                f"{env['batch_size']} would mix two. Fix: batch_size={latest.get('batch_size')}, or force=true"
            )
    record["sessions"].append(env)
    atomic_write_json(path, record)
    return record


def last_session(run_path: Path) -> dict | None:
    """The environment of the latest decoding session recorded for a run, if any."""
    path = Path(run_path) / "identity.json"
    sessions = json.loads(path.read_text()).get("sessions") if path.is_file() else None
    return sessions[-1] if sessions else None


def record_session(run_path: Path, env: dict) -> None:
    """Add a session to <run>/identity.json within a decoding session (e.g. the batch halved after an
    out-of-memory error), so that metrics.json says the run's outputs came from more than one setting."""
    path = Path(run_path) / "identity.json"
    record = json.loads(path.read_text())
    record["sessions"].append(env)
    atomic_write_json(path, record)


def session_summary(run_path: Path) -> dict:
    """For metrics.json: the environment of the first session, the prompts' hash, and whether
    sessions differed (a resume on another machine, batch size or library version)."""
    path = Path(run_path) / "identity.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    sessions = record.get("sessions") or [{}]
    summary = dict(sessions[0], prompts_sha256=record.get("prompts_sha256"), n_sessions=len(sessions))
    summary["mixed_environment"] = any(s != sessions[0] for s in sessions[1:])
    return summary
