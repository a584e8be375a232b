"""The command-line options every `python -m analysis.<name>` shares."""

from __future__ import annotations

import argparse
from pathlib import Path


def parser(name: str, doc: str, out_default: str = "results/analysis") -> argparse.ArgumentParser:
    """--results, --out, --n and --protocol for `python -m analysis.<name>`, the module docstring as help."""
    p = argparse.ArgumentParser(
        prog=f"python -m analysis.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="results directory holding runs/<pair>/<benchmark>/<run>/ (default: results)",
    )
    p.add_argument(
        "--out", type=Path, default=Path(out_default), help=f"where to write the outputs (default: {out_default})"
    )
    p.add_argument(
        "--n",
        default=None,
        help="use only runs with this subset size (e.g. 100, full); default: per benchmark, the "
        "setting with the most runs",
    )
    p.add_argument(
        "--protocol", default=None, help="use only runs of this protocol (e.g. ours, reference); default: as for --n"
    )
    return p
