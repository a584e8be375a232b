"""One run, described once: the composed Hydra config, checked and resolved at the entry point into a
typed description (`RunSpec`) that the rest of the library reads.

`blendin.run` (and the tools that start runs: sweeps, `tune`, `diagnose`, `rescore`) turn the config
into a `RunSpec` with `describe`; the run's name, directory, protocol, environment, decoding, scoring
and W&B record are all read from it, so that every setting is parsed in one place (the `decoding`
group into a `Sampling`, the protocol applied to the pair, defaults for keys that configs written
before a setting existed lack).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from .sampling import Sampling, sampling_from


@dataclass(frozen=True)
class EngineSettings:
    """How the engine decodes (not what): batch size, where and in what precision, the base's view, the
    guidance's schedule, compiled steps, overlap and speculative rounds (docs/engine.md)."""

    batch_size: int | str = 8
    device: str = "auto"
    dtype: str = "auto"
    base_view: str = "ids"
    guidance_schedule: str = "auto"
    compile: str = "none"
    overlap: bool | str | None = "auto"  # auto: on a GPU (`checks.overlap_setting`)
    speculate: int = 0


@dataclass(frozen=True)
class ParallelSettings:
    """Several processes on one run (`blendin.parallel`): the tensor-parallel degree, whether the guidance
    is split too, and how long a silent process may be before the run ends."""

    tp: int = 1
    guidance: str = "whole"
    timeout_s: float = 60


@dataclass(frozen=True)
class RunSpec:
    """One (pair, benchmark, method) run as configured.

    pair: the pair's config with the protocol applied (guidance models the reference protocol shows plain
        text); method, benchmark, protocol, judge, logger: their resolved config groups (plain dicts);
    sampling: the `decoding` settings; config_yaml: the resolved config as `config.yaml` records it.
    """

    results_dir: str
    force: bool
    pair: dict
    method: dict
    benchmark: dict
    sampling: Sampling
    protocol: dict
    judge: dict | None
    logger: dict | None
    engine: EngineSettings
    parallel: ParallelSettings
    config: dict
    config_yaml: str

    @property
    def method_name(self) -> str:
        return self.method["name"]

    @property
    def benchmark_name(self) -> str:
        return self.benchmark["name"]

    @property
    def pair_name(self) -> str:
        return self.pair["name"]

    @property
    def max_new_tokens(self) -> int:
        return self.benchmark["max_new_tokens"]


def with_protocol(pair: dict, protocol: dict | None) -> dict:
    """The pair config with the protocol applied: guidance models that the reference protocol shows
    plain text instead of their chat template (the reference code gave Qwen no template)."""
    pair = dict(pair)
    plain_sources = set((protocol or {}).get("plain_guidance") or [])
    for role in ("guidance", "aligned"):
        model = pair.get(role)
        if model and model.get("source") in plain_sources:
            pair[role] = dict(model, prompt_format="plain")
    untuned = pair.get("guidance_untuned")  # the guidance's untuned twin reads what the guidance reads
    if untuned and (pair.get("guidance") or {}).get("prompt_format") == "plain":
        pair["guidance_untuned"] = dict(untuned, prompt_format="plain")
    return pair


def describe(cfg) -> RunSpec:
    """The `RunSpec` of a composed `blendin.run` config (an OmegaConf node, or a RunSpec as is). It does
    not check values: `checks.check_run_config` does, before anything is described or loaded."""
    if isinstance(cfg, RunSpec):
        return cfg
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    plain.pop("hydra", None)
    engine = {key: plain[key] for key in EngineSettings.__dataclass_fields__ if key in plain}
    protocol = plain.get("protocol") or {}
    return RunSpec(
        results_dir=plain["results_dir"],
        force=bool(plain.get("force", False)),
        pair=with_protocol(plain["pair"], protocol),
        method=plain["method"],
        benchmark=plain["benchmark"],
        sampling=sampling_from(plain.get("decoding")),
        protocol=protocol,
        judge=plain.get("judge"),
        logger=plain.get("logger"),
        engine=EngineSettings(**engine),
        parallel=ParallelSettings(**(plain.get("parallel") or {})),
        config=plain,
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True) if OmegaConf.is_config(cfg) else OmegaConf.to_yaml(plain),
    )
