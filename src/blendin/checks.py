"""Check a composed run config before anything loads, so that a typo or an out-of-range value in
run 37 of a sweep fails at once, with the key named, instead of after hours of decoding.

Hydra already refuses command-line keys that do not exist (`benchmark.nn=5`); these checks cover
values, and keys that a hand-written config file (a new pair or experiment) may have got wrong.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from .benchmarks import BENCHMARKS, COMMON_KEYS, benchmark_from_config, check_settings
from .errors import ConfigError
from .judges import make_judge
from .methods import make_policy
from .methods import method as method_spec
from .models import resolve_device, resolve_dtype
from .pair import missing_role, pair_spec
from .sampling import Sampling, sampling_from

RUN_KEYS = {
    "results_dir",
    "force",
    "batch_size",
    "device",
    "dtype",
    "pair",
    "benchmark",
    "method",
    "judge",
    "logger",
    "protocol",
    "base_view",
    "compile",
    "guidance_schedule",
    "speculate",
    "overlap",
    "decoding",
    "plan",
    "parallel",
}
PROTOCOL_KEYS = {"name", "plain_guidance"}
PAIR_KEYS = {"name", "label", "base", "guidance", "aligned", "guidance_untuned"}
# every benchmark's keys, plus the benchmark-specific ones (TruthfulQA shuffle, XSTest part, ...);
# check_settings refuses a specific key on a benchmark it does not apply to
BENCHMARK_KEYS = set(COMMON_KEYS) | {key for cls in BENCHMARKS.values() for key in cls.OPTIONS}
LOGGER_KEYS = {"name", "project", "entity", "mode", "dir", "group", "tags"}
LOGGER_MODES = ("offline", "online", "disabled")
PARALLEL_KEYS = {"tp", "guidance", "timeout_s"}


def check_run_config(cfg) -> None:
    """Raise ConfigError naming the first bad key of a `blendin.run` config."""
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    plain.pop("hydra", None)
    if "model" in plain:
        raise ConfigError(
            "model=<name> does not choose anything by itself: a model plays a role in a pair. "
            "Use model@pair.base=<name> (or @pair.guidance, @pair.aligned), or pair=<name>"
        )
    _known("", plain, RUN_KEYS)
    if not isinstance(plain.get("results_dir"), str) or not plain["results_dir"].strip():
        raise ConfigError(
            f"results_dir={plain.get('results_dir')!r} must be a directory path, e.g. results_dir=results"
        )
    _boolean("force", plain.get("force", False))
    _boolean("plan", plain.get("plan", False))
    if plain.get("batch_size") != "auto":
        _positive_int("batch_size", plain.get("batch_size"))
    check_device(plain.get("device", "auto"), plain.get("dtype", "auto"))
    check_engine(
        plain.get("compile", "none"), plain.get("guidance_schedule", "auto"), plain.get("device", "auto"),
        plain.get("overlap", "auto"),
    )  # fmt: skip
    check_pair(plain.get("pair"))
    check_benchmark(plain.get("benchmark"))
    method = _node(plain, "method")
    make_policy(method)
    check_speculate(plain.get("speculate", 0), method.get("name"), plain.get("base_view", "ids"))
    name = str(method.get("name"))
    problem = missing_role(name, method_spec(name).roles, plain["pair"])
    if problem:
        raise ConfigError(problem)
    check_decoding(plain.get("decoding"), method.get("name"))
    make_judge(plain.get("judge"))
    check_logger(plain.get("logger"))
    check_protocol(plain.get("protocol"), plain.get("base_view", "ids"))
    check_placement(plain, method.get("name"))


def check_decoding(decoding, method_name) -> Sampling:
    """The `decoding` settings, and a method that can sample where they ask for sampling."""
    sampling = sampling_from(decoding)
    if not sampling.greedy and not method_spec(method_name).samples:
        raise ConfigError(
            f"method {method_name} decodes greedily only ({method_spec(method_name).summary}); "
            f"decoding.temperature={sampling.temperature} asks it to sample. Fix: decoding=greedy, or a "
            "token-level method (nudging, blendin, ...)"
        )
    return sampling


def overlap_setting(value) -> bool | None:
    """The `overlap` key as the engine takes it: auto -> None (on a GPU), true, false."""
    if value == "auto" or value is None:
        return None
    if not isinstance(value, bool):
        raise ConfigError(
            f"overlap={value!r} must be auto, true or false (true: the next forward starts before the host "
            "reads the step; auto: on a GPU)"
        )
    return value


def check_engine(compile, schedule, device, overlap="auto") -> None:
    """compile, guidance_schedule and overlap: known values, and cudagraphs only where CUDA is."""
    from .engine import SCHEDULES
    from .streams import check_compile

    overlap_setting(overlap)
    check_compile(compile, resolve_device(device, strict=False))
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"guidance_schedule={schedule!r} must be one of {', '.join(SCHEDULES)} (lazy: the "
            "guidance runs on steps where some row is unsure; every: every step; auto: every on a GPU)"
        )


def check_speculate(speculate, method_name, base_view="ids") -> None:
    """speculate: an integer >= 0, for a token-level method led by the base that reads its own ids."""
    from .speculation import check_speculate as check_value

    if check_value(speculate) == 0:
        return
    spec = method_spec(method_name)
    if spec.decoder != "token" or spec.roles[0] != "base" or len(spec.roles) > 2:
        raise ConfigError(
            f"speculate={speculate}: method {method_name} cannot speculate (speculative decoding checks the "
            "guidance's drafts with the base, one token-level step at a time). Fix: speculate=0"
        )
    if base_view != "ids":
        raise ConfigError(f"speculate={speculate} needs base_view=ids (the base reads the drafts as ids)")


def check_placement(plain: dict, method_name) -> None:
    """Where the models run: `parallel` (processes, tensor-parallel split) and a model's own `device`.
    A split is checked against each split model's config (heads, a TP plan) before any weights load."""
    from .models import model_config
    from .parallel import check_parallel, check_splittable, place, split_roles

    parallel = plain.get("parallel") or {}
    _known("parallel.", parallel, PARALLEL_KEYS)
    tp = parallel.get("tp", 1)
    check_parallel(tp, parallel.get("timeout_s", 60), plain.get("device", "auto"))
    if parallel.get("guidance", "whole") not in ("whole", "split"):
        raise ConfigError(
            f"parallel.guidance={parallel.get('guidance')!r} must be whole (every process holds the whole guidance "
            "model) or split (split it like the base)"
        )
    spec = method_spec(method_name)
    pair = pair_spec(plain["pair"])
    for role in split_roles(spec.roles, tp, parallel.get("guidance", "whole")):
        model = getattr(pair, role)
        check_splittable(model_config(model), tp, role, model.source)
    for role in ("base", "guidance", "aligned", "guidance_untuned"):
        model = getattr(pair, role)
        if model is None or model.device is None:
            continue
        resolve_device(model.device, strict=False)
        if role != "guidance" or spec.decoder != "token" or plain.get("speculate", 0) or place().world > 1:
            raise ConfigError(
                f"pair.{role}.device={model.device}: only the guidance model may run on a device of its own, for "
                "a token-level method decoding step by step in one process (not with speculate, nudging_words, "
                f"teacher forcing or several processes). Fix: drop pair.{role}.device"
            )


def check_protocol(protocol, base_view) -> None:
    from .engine import BASE_VIEWS

    if base_view not in BASE_VIEWS:
        raise ConfigError(
            f"base_view={base_view!r} must be ids (the base reads its own token ids, ours) or text "
            "(it re-reads the tokenized text every step, as the reference code's servers did)"
        )
    if protocol is None:
        return
    protocol = _node({"protocol": protocol}, "protocol")
    _known("protocol.", protocol, PROTOCOL_KEYS)
    if protocol.get("name") not in ("ours", "reference"):
        raise ConfigError(f"protocol.name={protocol.get('name')!r} must be ours or reference (protocol=ours|reference)")
    sources = protocol.get("plain_guidance") or []
    if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
        raise ConfigError(f"protocol.plain_guidance={sources!r} must be a list of guidance model sources")


def check_pair(pair) -> None:
    pair = _node({"pair": pair}, "pair")
    _known("pair.", pair, PAIR_KEYS)
    name = pair.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name or name.startswith("."):
        raise ConfigError(f"pair.name={name!r} must be a plain folder name (it names results/runs/<pair>/)")
    pair_spec(pair)


def check_benchmark(benchmark) -> None:
    """The benchmark node: known keys, n / split / subset settings, benchmark-specific options, and that its
    data folder is there (it reads no data)."""
    benchmark = _node({"benchmark": benchmark}, "benchmark")
    _known("benchmark.", benchmark, BENCHMARK_KEYS)
    if benchmark.get("name") not in BENCHMARKS:
        raise ConfigError(f"benchmark.name={benchmark.get('name')!r} is unknown. Available: {', '.join(BENCHMARKS)}")
    if benchmark.get("n") is None:
        raise ConfigError("benchmark.n=None must be a positive integer or 'full', or head:N for the first N items")
    _positive_int("benchmark.max_new_tokens", benchmark.get("max_new_tokens"))
    stop = benchmark.get("stop") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ConfigError(f"benchmark.stop={stop!r} must be a list of non-empty strings, e.g. ['\\nQuestion:']")
    check_settings(benchmark)  # n, seed, source, split, subset_rule, exclude_n, and each benchmark's own keys
    benchmark_from_config(benchmark).check_data()


def check_device(device, dtype) -> None:
    """Spelling only (strict=False): a sweep checked on a login node may run on GPU nodes."""
    resolve_dtype(dtype, resolve_device(device, strict=False))


def check_logger(logger) -> None:
    if logger is None:
        return
    logger = _node({"logger": logger}, "logger")
    _known("logger.", logger, LOGGER_KEYS)
    if logger.get("name") not in ("none", "wandb"):
        raise ConfigError(f"logger.name={logger.get('name')!r} must be none or wandb (logger=none | logger=wandb)")
    if logger.get("name") == "wandb" and logger.get("mode") not in LOGGER_MODES:
        raise ConfigError(f"logger.mode={logger.get('mode')!r} must be one of {', '.join(LOGGER_MODES)}")


def _node(parent: dict, key: str) -> dict:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{key} is missing or not a config group: choose one, e.g. {key}=<name> (see conf/{key}/)")
    return value


def _known(prefix: str, node: dict, keys: set) -> None:
    unknown = sorted(set(node) - keys)
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(keys))}"
        )


def _boolean(key: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")


def _positive_int(key: str, value, also: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer{' ' + also if also else ''}")
