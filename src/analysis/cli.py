"""The command-line options and input checks every `python -m analysis.<name>` shares.

A command fails loudly and writes nothing when its input is wrong or leaves it nothing to compute:
- a --results folder that does not exist, or holds no finished run (exit 2 / 1);
- a --n or --protocol value that no stored run has (exit 2; the stored values are listed);
- no run of the kind the artefact needs (exit 1; what is stored is listed).
Argument types (`--n abc`) are refused by argparse itself (exit 2). Each `main` is wrapped by
`command`, which turns these errors into one `python -m analysis.<name>: error: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import sys
from pathlib import Path

import pandas as pd

from .load import load_runs, unfinished_runs


class CommandError(Exception):
    """A bad input: the command prints the message, writes nothing and exits with `code`."""

    code = 2


class NothingToCompute(CommandError):
    """The inputs are valid but hold no run this artefact uses: nothing is written."""

    code = 1


def n_value(text: str) -> str:
    """argparse type of --n: a positive whole number of items, or 'full'."""
    if text == "full" or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid value {text!r}: use a positive whole number of items (e.g. 100) or 'full'"
    )


def positive_int(text: str) -> int:
    """argparse type of counts such as --n-boot and --permutations."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"invalid value {text!r}: use a positive whole number (e.g. 2000)")


def add_filters(p: argparse.ArgumentParser) -> None:
    """--n and --protocol (shared by the commands and the report)."""
    p.add_argument(
        "--n",
        type=n_value,
        default=None,
        help="use only runs with this subset size (a whole number such as 100, or full); default: per "
        "benchmark, the setting with the most runs",
    )
    p.add_argument(
        "--protocol",
        default=None,
        help="use only runs of this protocol (ours or reference, as stored); default: as for --n",
    )


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
    add_filters(p)
    return p


def command(name: str):
    """Decorate a command's `main(argv) -> int`: a CommandError becomes its exit code and one line on stderr."""

    def wrap(main):
        @functools.wraps(main)  # main.__wrapped__ is the undecorated one (the report catches the errors itself)
        def run(argv=None) -> int:
            try:
                return main(argv)
            except CommandError as err:
                print(f"python -m analysis.{name}: error: {err}", file=sys.stderr)
                return err.code

        return run

    return wrap


# ---- checks ----------------------------------------------------------------------------------------


def _stored(values: pd.Series) -> str:
    """'ours (25 runs), reference (4 runs)': the distinct values of a column with their counts."""
    counts = values.astype(str).value_counts()
    return ", ".join(f"{v} ({c} run{'s' if c != 1 else ''})" for v, c in sorted(counts.items()))


def check_folder(results: Path) -> None:
    """A --results folder that does not exist is an error, with the near names beside it."""
    if Path(results).is_dir():
        return
    parent = Path(results).parent
    near = difflib.get_close_matches(
        Path(results).name, [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else [], n=3
    )
    hint = f"; did you mean {' or '.join(str(parent / n) for n in near)}?" if near else ""
    raise CommandError(f"--results {results}: no such folder{hint}")


def check_filters(frame: pd.DataFrame, results: Path, n: str | None, protocol: str | None) -> None:
    """A --n or --protocol value (or the pair of them) that no stored run has is an error listing what is stored."""
    for flag, column, value in (("--n", "n_spec", n), ("--protocol", "protocol", protocol)):
        if value is not None and not (frame[column].astype(str) == str(value)).any():
            raise CommandError(
                f"{flag} {value}: no run under {results}/runs has it; stored values: {_stored(frame[column])}"
            )
    if n is not None and protocol is not None:
        both = (frame["n_spec"].astype(str) == str(n)) & (frame["protocol"] == protocol)
        if not both.any():
            raise CommandError(
                f"--n {n} --protocol {protocol}: no run has both; stored: "
                + _stored(frame["protocol"] + " n=" + frame["n_spec"].astype(str))
            )


def load(args) -> pd.DataFrame:
    """The runs under args.results, after checking the folder and the --n / --protocol filters against them."""
    check_folder(args.results)
    frame = load_runs(args.results)
    if frame.empty:
        unfinished = unfinished_runs(args.results)
        raise NothingToCompute(
            f"--results {args.results}: no finished run under {args.results}/runs (a finished run is "
            "runs/<pair>/<benchmark>/<run>/metrics.json)"
            + (f"; {len(unfinished)} unfinished run folder(s) there" if unfinished else "")
        )
    check_filters(frame, args.results, args.n, args.protocol)
    return frame


def require(found, what: str, frame: pd.DataFrame, args, hint: str = "") -> None:
    """Nothing to compute when `found` (what the artefact would show: runs, rows) is empty: say what is stored."""
    if len(found):
        return
    filters = "".join(f" {flag} {v}" for flag, v in (("--n", args.n), ("--protocol", args.protocol)) if v)
    raise NothingToCompute(
        f"no {what} under {args.results}/runs"
        + (f" with{filters}" if filters else "")
        + f"; stored methods: {_stored(frame['method'])}"
        + (f". {hint}" if hint else "")
    )
