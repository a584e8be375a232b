"""Where benchmark data comes from (a local data directory or the Hugging Face hub) and which
items of it a run uses (subsets).

Both sources go through the `datasets` library (`load_dataset("json" | "csv", data_files=...)` for
local files, `load_dataset(repo, config, split=...)` for the hub) and end as the same thing: a list
of rows shaped like the hub dataset's rows. Each benchmark then turns rows into samples with ONE
function, so a sample has the same id, prompt and gold answer whichever source it came from. (One
exception in the reading, not in the path: TruthfulQA's local mc_task.json is read with `json`, see
`TruthfulQA.local_rows`.)

The data directory is, in order: the `data_dir` setting, the `BLENDIN_DATA_DIR` environment
variable, or `../shared/data` beside the repository root. Files are read in place, never copied
(`datasets` keeps a converted Arrow copy in its own cache, `~/.cache/huggingface/datasets`).

Subsets (`benchmark.n`, `benchmark.subset_rule`, `benchmark.exclude_n`) are chosen by `select`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
from pathlib import Path

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
# a git checkout of this project (src/blendin/ inside it), not an installed copy in some environment
CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "src" / "blendin").is_dir()
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" if CHECKOUT else Path("shared/data")
SUBSET_RULES = ("seeded", "reference")
REFERENCE_SEED = 609  # the reference code's numpy seed: its subsets ARE the paper's items


class DataError(ConfigError):
    """Benchmark data is missing or malformed."""


# ---------------------------------------------------------------- the local data directory
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
    """A data file (or folder) of a benchmark; a clear error says where it looked and how to point elsewhere."""
    root = data_dir(setting)
    path = root / relative
    if not path.exists():
        raise DataError(
            f"benchmark {benchmark}: no data at {path} (data directory {root}, {_where(setting)}). "
            "Fix: set BLENDIN_DATA_DIR=/path/to/data or benchmark.data_dir=/path/to/data, "
            "or benchmark.source=hub to read it from the Hugging Face hub"
        )
    return path


@contextlib.contextmanager
def _quiet_datasets():
    """No 'Generating train split' bars for a local file that loads in milliseconds."""
    import datasets

    was_disabled, level = datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not was_disabled:
            datasets.enable_progress_bars()


def _load_local(builder: str, files: list[Path], benchmark: str, **options) -> list[list[dict]]:
    """Rows of each local file (a list per file, in the order given), read by one
    `datasets.load_dataset(builder, data_files=...)` call that keeps each file as its own split."""
    datasets = _import_datasets(benchmark)
    splits = {f"file{i}": str(path) for i, path in enumerate(files)}  # any file name is a valid split name
    try:
        with _quiet_datasets():
            tables = datasets.load_dataset(builder, data_files=splits, **options)
    except Exception as err:  # a malformed file: find the bad line with the plain reader for a precise message
        if builder == "json":
            for path in files:
                read_jsonl(path, benchmark) if path.suffix == ".jsonl" else read_json(path, benchmark)
        raise DataError(
            f"benchmark {benchmark}: could not read {', '.join(map(str, files[:3]))} ({type(err).__name__}: {err})"
        ) from None
    return [tables[split].to_list() for split in splits]


def local_json_rows(path: Path, benchmark: str) -> list[dict]:
    """Rows of a JSON Lines file, or of a JSON file holding one list of records."""
    return _load_local("json", [path], benchmark)[0]


def local_csv_rows(files: list[Path], benchmark: str, columns: list[str] | None = None) -> list[list[dict]]:
    """Rows of each CSV file (a list per file), every field read as text: no 1.0 from '1', no NaN
    from 'None' or 'NA' (MMLU has such options).

    `columns`: the names of a header-less file's columns; None = the first file's own header line.
    """
    header = columns is None
    if columns is None:
        with open(files[0], encoding="utf-8-sig", newline="") as fh:
            columns = next(csv.reader(fh), [])
    datasets = _import_datasets(benchmark)
    features = datasets.Features({name: datasets.Value("string") for name in columns})
    options = dict(features=features, na_filter=False, keep_default_na=False, encoding="utf-8-sig")
    if not header:
        options.update(column_names=columns, header=None)
    return _load_local("csv", files, benchmark, **options)


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


def require(row: dict, keys: tuple[str, ...], benchmark: str, where: str) -> None:
    missing = [k for k in keys if row.get(k) is None]
    if missing:
        raise DataError(f"benchmark {benchmark}: {where} lacks the fields {missing}; is this the right file?")


# ---------------------------------------------------------------- the Hugging Face hub
def _import_datasets(benchmark: str):
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"benchmark {benchmark}: reading data needs the `datasets` package: "
            "pip install -e . (or pip install datasets)"
        ) from None
    return datasets


def hub_rows(benchmark: str, repo: str, config: str | None, split: str) -> list[dict]:
    """Rows of a hub dataset split (needs network, or the dataset already in the `datasets` cache)."""
    datasets = _import_datasets(benchmark)
    try:
        return datasets.load_dataset(repo, config, split=split).to_list()
    except Exception as err:  # network, auth, or missing dataset: all end the same way for the user
        raise DataError(
            f"benchmark {benchmark}: could not read {repo} ({config}, {split}) from the hub: {err}. "
            "Fix: check the network, or use local files (benchmark.source=local)"
        ) from None


# ---------------------------------------------------------------- subsets
def parse_n(n) -> tuple[str, int | None]:
    """`benchmark.n` as (kind, count): ('all', None) for full, ('random', k) for an int k, ('head', k) for head:k."""
    if n in (None, "full", "all"):
        return "all", None
    if isinstance(n, str) and n.startswith("head:"):
        count = n.removeprefix("head:").strip()
        if count.isdigit() and int(count) >= 1:
            return "head", int(count)
    elif not isinstance(n, bool) and isinstance(n, int) and n >= 1:
        return "random", n
    raise ConfigError(
        f"benchmark.n={n!r} must be a positive integer or 'full', or head:N for the first N items "
        "in file order (e.g. benchmark.n=100, benchmark.n=full, benchmark.n=head:30)"
    )


def check_subset_settings(n, subset_rule: str, exclude_n) -> None:
    """ConfigError for a bad benchmark.n, benchmark.subset_rule or benchmark.exclude_n (no data needed)."""
    parse_n(n)
    if subset_rule not in SUBSET_RULES:
        raise ConfigError(
            f"benchmark.subset_rule={subset_rule!r} must be seeded (random.Random(seed), ours) or "
            f"reference (numpy seed {REFERENCE_SEED}, the paper's subset)"
        )
    if exclude_n is not None and (isinstance(exclude_n, bool) or not isinstance(exclude_n, int) or exclude_n < 1):
        raise ConfigError(
            f"benchmark.exclude_n={exclude_n!r} must be null or a positive integer (the size of the "
            "test subset to leave out, e.g. 100)"
        )


def random_subset(n_total: int, k: int, seed: int, rule: str = "seeded") -> list[int]:
    """k indices out of n_total, sorted: `seeded` = random.Random(seed).sample (ours); `reference` = the first
    k of numpy.random.RandomState(609).permutation(n_total), which is what the reference code's
    `numpy.random.seed(609); numpy.random.choice(N, k, replace=False)` picks (seed ignored)."""
    if k >= n_total:
        return list(range(n_total))
    if rule == "reference":
        import numpy

        return sorted(int(i) for i in numpy.random.RandomState(REFERENCE_SEED).permutation(n_total)[:k])
    return sorted(random.Random(seed).sample(range(n_total), k))


def select(n_total: int, n=None, seed: int = 0, rule: str = "seeded", exclude_n: int | None = None) -> list[int]:
    """Indices (in file order) of the items a run uses out of n_total.

    n: an int (a fixed random subset by `rule`), 'full' (all) or 'head:N' (the first N in file order).
    exclude_n: first remove the items of the size-`exclude_n` subset by the same seed and rule (the
    test items of a run with benchmark.n=exclude_n), then choose among the rest: a slice disjoint
    from those test items, for tuning on a benchmark that has no validation split.
    """
    check_subset_settings(n, rule, exclude_n)
    pool = list(range(n_total))
    if exclude_n is not None:
        left_out = set(random_subset(n_total, exclude_n, seed, rule))
        pool = [i for i in pool if i not in left_out]
        if not pool:
            raise ConfigError(
                f"benchmark.exclude_n={exclude_n} leaves no items (the split has {n_total}); use a smaller exclude_n"
            )
    kind, k = parse_n(n)
    if kind == "all":
        return pool
    assert k is not None, "parse_n gives a count for head and random"
    if kind == "head":
        return pool[:k]
    return [pool[i] for i in random_subset(len(pool), k, seed, rule)]
