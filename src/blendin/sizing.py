"""What the paper's pairs need on a GPU, computed from the models' published configs (docs/gpu.md).

    python -m blendin.sizing                      # memory of every pair: weights, KV cache, rows that fit
    python -m blendin.sizing --grids              # and an estimate of each paper grid's decoding time
    python -m blendin.sizing --grids --gpu A100-SXM4-80GB --gpu-gb 80 --usd-per-hour 2

Each model is built by transformers from its config in `blendin.synthetic.CONFIGS` on the meta device
(shapes only: no weights, nothing downloaded), so its parameter count is transformers' own. Memory per
row and the rows that fit use the engine's own accounting (`memory.kv_bytes_per_token`,
`memory.auto_batch_size`); bytes read per decode step are `bench.bytes_read_per_step`.

The time estimate is arithmetic, not a measurement: a decode step of a memory-bound model cannot be
faster than (bytes it must read) / (the GPU's peak bandwidth). A run of N outputs in batches of B
rows takes ceil(N / B) x max_new_tokens steps if every output runs to its budget (real outputs often
stop earlier), and each step reads the base's weights and KV cache, plus the guidance's on the GPU's
`every` schedule. So the figure is the floor at the full budget; a step that reaches a fraction f of
the bandwidth (`python -m blendin.bench` measures it on a GPU) takes 1/f as long. Prefill, model
loading and host work are left out. One-model runs that other pairs share are counted once, as the
runner copies them (`reused_from`).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from .cli import CONF_DIR
from .synthetic import CONFIGS, build, model_config

GIB = 1024**3
SUFFIXES = ("-instruct", "-it", "-pt", "-base")  # an instruct or pretrained sibling shares its architecture
PROMPT_TOKENS = 256  # a benchmark prompt (chat template included), rounded up: GSM8K's are 100-200 tokens
PAPER_GRIDS = (
    "paper_fig2",
    "paper_fig4",
    "paper_table1",
    "paper_table2",
    "paper_table3",
    "tau_sweep",
    "alpha_sweep",
    "paper_table6",
)


def architecture(model: str) -> str:
    """The CONFIGS entry of a model of conf/model/ (llama-3.1-8b-instruct -> llama-3.1-8b)."""
    name = model
    for suffix in SUFFIXES:
        name = name.removesuffix(suffix)
    if name not in CONFIGS:
        raise KeyError(f"{model}: no published config in blendin.synthetic.CONFIGS (looked for {name!r})")
    return name


class _Shapes(torch.nn.Module):
    """A model built on the meta device, as `bench.bytes_read_per_step` reads one: meta tensors all report
    data_ptr() 0, so tied embeddings are told apart by identity instead."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def parameters(self, recurse: bool = True):
        return self.inner.parameters(recurse)

    def get_input_embeddings(self):
        return SimpleNamespace(weight=_Identity(self.inner.get_input_embeddings().weight))

    def get_output_embeddings(self):
        return SimpleNamespace(weight=_Identity(self.inner.get_output_embeddings().weight))


class _Identity:
    def __init__(self, tensor):
        self.tensor = tensor

    def data_ptr(self) -> int:
        return id(self.tensor)

    def numel(self) -> int:
        return self.tensor.numel()

    def element_size(self) -> int:
        return self.tensor.element_size()


@cache
def meta_model(name: str, dtype: torch.dtype = torch.bfloat16) -> _Shapes:
    """The transformers model of CONFIGS[name], on the meta device in `dtype`."""
    return _Shapes(build(model_config(name), "meta", dtype))


@dataclass(frozen=True)
class Size:
    model: str
    parameters: int
    weight_bytes: int
    kv_bytes_per_token: int
    vocab: int


def size(model: str) -> Size:
    """A conf/model/ model's parameters, bf16 weight bytes and KV bytes per token (all layers)."""
    from .memory import kv_bytes_per_token

    shapes = meta_model(architecture(model))
    params = sum(p.numel() for p in shapes.parameters())
    vocab = shapes.inner.get_output_embeddings().weight.shape[0]
    return Size(model, params, params * 2, kv_bytes_per_token(shapes), vocab)


def pair_models(pair: str) -> dict[str, str]:
    """role -> conf/model/ name of a pair of conf/pair/ (from its defaults list)."""
    cfg = OmegaConf.load(CONF_DIR / "pair" / f"{pair}.yaml")
    roles = {}
    for entry in cfg.get("defaults", []):
        if isinstance(entry, str) or OmegaConf.is_dict(entry) is False:
            continue
        for key, value in entry.items():
            if str(key).startswith("/model@"):
                roles[str(key).split("@", 1)[1]] = str(value)
    return roles


def _loaded(model: str):
    """What memory.auto_batch_size reads of a loaded model."""
    shapes = meta_model(architecture(model))
    return SimpleNamespace(model=shapes, vocab_size=size(model).vocab, device=torch.device("cuda"))


def rows_that_fit(models: list[str], gpu_gb: float, max_new_tokens: int, prompt: int = PROMPT_TOKENS) -> int:
    """memory.auto_batch_size for these models on a GPU of gpu_gb, after their bf16 weights (0 if they do
    not fit). Its per-row cost: each model's KV cache for the planned columns, float32 distributions and the
    prompt's prefill activations."""
    from .memory import auto_batch_size

    free = gpu_gb * GIB - sum(size(m).weight_bytes for m in models)
    if free <= 0:
        return 0
    return auto_batch_size([_loaded(m) for m in models], prompt, max_new_tokens, free_bytes=int(free))


def memory_table(pairs: list[str] | None = None, max_new_tokens: int = 512, gpus=(24, 40, 80)) -> str:
    pairs = pairs or sorted(p.stem for p in (CONF_DIR / "pair").glob("*.yaml"))
    head = (
        "| pair | base (params) | guidance (params) | weights, bf16 | KV cache per token | "
        + " | ".join(f"rows on {g} GB" for g in gpus)
        + " | aligned model alone (params, bf16) |\n|---|---|---|---:|---:|"
        + "---:|" * len(gpus)
        + "---|"
    )
    lines = [head]
    for pair in pairs:
        roles = pair_models(pair)
        base, guidance = size(roles["base"]), size(roles["guidance"])
        weights = (base.weight_bytes + guidance.weight_bytes) / GIB
        kv = (base.kv_bytes_per_token + guidance.kv_bytes_per_token) / 1024
        rows = [str(rows_that_fit([roles["base"], roles["guidance"]], g, max_new_tokens) or "no") for g in gpus]
        aligned = size(roles["aligned"]) if "aligned" in roles else None
        lines.append(
            f"| `{pair}` | {roles['base']} ({_billions(base.parameters)}) | {roles['guidance']} "
            f"({_billions(guidance.parameters)}) | {weights:.1f} GiB | {kv:.0f} KiB | "
            + " | ".join(rows)
            + " | "
            + (
                f"{roles['aligned']} ({_billions(aligned.parameters)}, {aligned.weight_bytes / GIB:.1f} GiB)"
                if aligned
                else "-"
            )
            + " |"
        )
    return "\n".join(lines)


def _alone(model: str, sized: Size) -> str:
    return f"{model} ({_billions(sized.parameters)}, {sized.weight_bytes / GIB:.1f} GiB)"


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 0.995e9 else f"{n / 1e6:.0f}M"


# ---------------------------------------------------------------------------------------------- time


def grid_configs(experiment: str, results_dir: str) -> list:
    """The composed config of every job of an experiment grid, as `python -m blendin.run -m` builds them."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    GlobalHydra.instance().clear()
    base = [f"experiment={experiment}", f"results_dir={results_dir}", "device=cuda", "dtype=bfloat16"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=base, return_hydra_config=True)
        params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]
        jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params + base), None)[0]
        return [compose("config", overrides=list(job)) for job in jobs]


def run_seconds(cfg, outputs: int, bandwidth: float, gpu_gb: float) -> float:
    """Memory-bound decoding time of `outputs` outputs of one run at the full token budget (module doc)."""
    from .bench import bytes_read_per_step
    from .methods import method as method_spec

    roles = pair_models(cfg.pair.name)
    spec = method_spec(cfg.method.name)
    models = [roles[r] for r in spec.roles]
    budget = cfg.benchmark.max_new_tokens
    batch = max(1, rows_that_fit(models, gpu_gb, budget))
    steps = math.ceil(outputs / batch) * budget
    rows = min(batch, outputs)
    columns = PROMPT_TOKENS + budget / 2
    per_step = sum(bytes_read_per_step(_loaded(m), rows, columns) for m in models)
    return steps * per_step / bandwidth


def grid_table(
    experiments=PAPER_GRIDS, gpu: str = "H100", gpu_gb: float = 80, usd_per_hour: float | None = None
) -> str:
    from .bench import PEAK_BANDWIDTH
    from .plan import plan

    bandwidth = next(bw for key, bw in PEAK_BANDWIDTH.items() if key in gpu)
    cost = f" | at ${usd_per_hour:g} per GPU-hour" if usd_per_hour else ""
    lines = [
        f"| experiment | runs: decoded + copied | outputs decoded | GPU-hours (floor, {gpu}, "
        f"{bandwidth / 1e12:g} TB/s) | longest run{cost} |",
        "|---|---:|---:|---:|---:" + ("|---:|" if cost else "|"),
    ]
    with tempfile.TemporaryDirectory() as empty:  # nothing stored: every run is to be decoded or copied
        for experiment in experiments:
            cfgs = grid_configs(experiment, empty)
            rows = plan(cfgs)
            decoded = [(c, r) for c, r in zip(cfgs, rows) if r.status != "reuse"]
            seconds = [run_seconds(c, r.outputs, bandwidth, gpu_gb) for c, r in decoded]
            hours = sum(seconds) / 3600
            line = (
                f"| `{experiment}` | {len(decoded)} + {len(rows) - len(decoded)} | "
                f"{sum(r.outputs for _, r in decoded)} | {hours:.2f} | {max(seconds) / 60:.1f} min"
            )
            lines.append(line + (f" | ${hours * usd_per_hour:.2f} |" if usd_per_hour else " |"))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m blendin.sizing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", nargs="+", help="pairs of conf/pair/ (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="token budget for the rows that fit")
    parser.add_argument("--grids", action="store_true", help="also estimate each paper grid's decoding time")
    parser.add_argument("--experiments", nargs="+", default=list(PAPER_GRIDS), help="grids of conf/experiment/")
    parser.add_argument("--gpu", default="H100", help="a GPU name of bench.PEAK_BANDWIDTH (its peak bandwidth)")
    parser.add_argument("--gpu-gb", type=float, default=80, help="its memory in GB")
    parser.add_argument("--usd-per-hour", type=float, help="price of one GPU-hour, for a cost column")
    args = parser.parse_args(argv)
    print(memory_table(args.pairs, args.max_new_tokens))
    if args.grids:
        print()
        print(grid_table(args.experiments, args.gpu, args.gpu_gb, args.usd_per_hour))


if __name__ == "__main__":
    main()
