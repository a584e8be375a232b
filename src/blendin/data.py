"""Where benchmark data comes from: a local data directory, or the Hugging Face hub.

The data directory is, in order: the `data_dir` setting, the `BLENDIN_DATA_DIR` environment
variable, or `../shared/data` beside the repository root. Files are read in place, never copied.
"""
from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


class DataError(ConfigError):
    """Benchmark data is missing or malformed."""


def data_dir(setting: str | None = None) -> Path:
    chosen = setting or os.environ.get("BLENDIN_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()


def _where(setting: str | None) -> str:
    if setting:
        return "from the data_dir setting"
    if os.environ.get("BLENDIN_DATA_DIR"):
        return "from BLENDIN_DATA_DIR"
    return "the default, ../shared/data beside the repository"


def local_file(benchmark: str, relative: str, setting: str | None = None) -> Path:
    """A data file of a benchmark; a clear error says where it looked and how to point elsewhere."""
    root = data_dir(setting)
    path = root / relative
    if not path.exists():
        raise DataError(
            f"benchmark {benchmark}: no data at {path} (data directory {root}, {_where(setting)}). "
            "Fix: set BLENDIN_DATA_DIR=/path/to/data or benchmark.data_dir=/path/to/data, "
            "or benchmark.source=hub to read it from the Hugging Face hub")
    return path


def read_jsonl(path: Path, benchmark: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"benchmark {benchmark}: {path} line {number} is not JSON ({err})") from None
    return rows


def read_json(path: Path, benchmark: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise DataError(f"benchmark {benchmark}: {path} is not valid JSON ({err})") from None


def read_csv(path: Path, header: bool = True) -> list:
    with open(path, encoding="utf-8-sig", newline="") as fh:  # TruthfulQA's CSVs carry a BOM
        return list(csv.DictReader(fh)) if header else list(csv.reader(fh))


def require(row: dict, keys: tuple[str, ...], benchmark: str, where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"benchmark {benchmark}: {where} lacks the fields {missing}; is this the right file?")


def hub_rows(benchmark: str, repo: str, config: str | None, split: str) -> list[dict]:
    """Rows of a hub dataset (needs the `datasets` package and network)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError(f"benchmark {benchmark}: reading from the hub needs `pip install datasets`") from None
    try:
        return list(load_dataset(repo, config, split=split))
    except Exception as err:  # network, auth, or missing dataset: all end the same way for the user
        raise DataError(f"benchmark {benchmark}: could not read {repo} ({config}, {split}) from the hub: {err}. "
                        "Fix: check the network, or use local files (benchmark.source=local)") from None


def subset(n_total: int, n: int | str | None, seed: int) -> list[int]:
    """Indices of a fixed-seed random subset of n items (sorted), or all for n = full/None."""
    if n in (None, "full", "all"):
        return list(range(n_total))
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"benchmark.n={n!r} must be a positive integer or 'full'")
    if n >= n_total:
        return list(range(n_total))
    return sorted(random.Random(seed).sample(range(n_total), n))
