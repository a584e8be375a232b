"""One run's directory (docs/running.md), written so that nothing is lost when a run dies.

While decoding, each finished batch is appended to `samples.jsonl` (flushed and fsynced) and its
per-token trace written as `_parts/tokens-<id>-<index>.parquet` (named after the batch's first
output). When several processes decode one run (`blendin.parallel`), each group appends to a file of
its own, `_parts/samples-<writer>.jsonl`, so that a line torn by a kill is always the last of its
file and no two processes write one file; the run's outputs are the lines of all these files. A
restarted run reads the finished outputs' (sample id, sample index) keys and skips them; a line torn
by a kill is dropped, and trace rows of outputs without a line are pruned. Once every
output is decoded and scored, `samples.jsonl` is rewritten with the scores, the parts become
`tokens.parquet`, and `metrics.json` is written last: its presence marks a finished run. Every
whole-file write is temp file + rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from .errors import RunBusyError


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, default=str) + "\n" for r in records)


def _write_parquet(frame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def output_key(record: dict) -> tuple[str, int]:
    """An output's key: (sample id, sample index); index 0 for greedy runs and runs stored before
    outputs had one."""
    return record["id"], int(record.get("sample", 0))


def indexed(frame):
    """A trace frame with its `sample` column (0 where written before outputs had an index)."""
    if "sample" not in frame:
        frame.insert(1, "sample", 0)
    else:
        frame["sample"] = frame["sample"].fillna(0).astype("int64")
    return frame


def trace_keys(frame) -> list[tuple[str, int]]:
    """The output key of each row of a per-token trace."""
    index = frame["sample"] if "sample" in frame else [0] * len(frame)
    return list(zip(frame["sample_id"], (int(i) for i in index)))


def _read_lines(path: Path, repair: bool = True) -> list[dict]:
    """The records of one JSON-lines file; a torn last line is cut off the file (repair=True: only the
    run's writer, which holds its lock, may do that; another process may be writing that line now)."""
    if not path.is_file():
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
    if repair and good_bytes != path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good_bytes)
    return records


class RunStore:
    """writer: this process's own name among the run's writers (`parallel.Ranks.writer`): it appends to
    `_parts/samples-<writer>.jsonl`; None (one writer) appends to samples.jsonl itself."""

    def __init__(self, path: Path, writer: str | None = None):
        self.path = Path(path)
        self.samples_path = self.path / "samples.jsonl"
        self.metrics_path = self.path / "metrics.json"
        self.parts = self.path / "_parts"
        self.appends_to = self.samples_path if writer is None else self.parts / f"samples-{writer}.jsonl"

    @property
    def finished(self) -> bool:
        return self.metrics_path.is_file()

    @contextlib.contextmanager
    def lock(self):
        """Hold the run's lock while writing it. A second process on the same run stops with
        RunBusyError. The OS drops the lock when its holder dies, even by SIGKILL, so a killed run
        never blocks its own restart (POSIX record locks also work on NFS-mounted results)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / ".lock", "a+")
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunBusyError(
                f"{self.path} is being written by {holder}. Wait for it to finish, or stop it; "
                "a run never needs two writers (rerun the same command later to resume)"
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            fh.flush()
            yield self
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)
            fh.close()

    def reset(self) -> None:
        """Delete everything of the run except its lock file (force=true starts over)."""
        for item in self.path.iterdir() if self.path.is_dir() else []:
            if item.name != ".lock":
                shutil.rmtree(item) if item.is_dir() else item.unlink()

    def samples(self, repair: bool = True) -> list[dict]:
        """Records written so far (samples.jsonl, then each writer's file); a torn last line (killed
        mid-write) is cut off its file. repair=False reads without cutting: for reading another run,
        whose writer may be in the middle of a line."""
        writers = sorted(self.parts.glob("samples-*.jsonl")) if self.parts.is_dir() else []
        return [r for path in [self.samples_path, *writers] for r in _read_lines(path, repair)]

    def prune_parts(self, done: set[tuple[str, int]]) -> None:
        """Keep only the trace rows of recorded outputs (a kill between a batch's trace and its sample
        lines, or in the middle of the lines). `done` holds (sample id, sample index) pairs (`output_key`)."""
        import pandas as pd

        for part in sorted(self.parts.glob("tokens-*.parquet")) if self.parts.is_dir() else []:
            frame = indexed(pd.read_parquet(part))
            kept = pd.Series(trace_keys(frame), index=frame.index).isin(done)
            if not kept.any():
                part.unlink()
            elif not kept.all():
                _write_parquet(frame[kept].reset_index(drop=True), part)

    def append(self, records: list[dict], trace_rows: dict[str, list]) -> None:
        """Store a finished batch: its trace first, then its sample lines (which mark it done)."""
        import pandas as pd

        self.parts.mkdir(parents=True, exist_ok=True)
        first = records[0]
        _write_parquet(pd.DataFrame(trace_rows), self.parts / f"tokens-{first['id']}-{first.get('sample', 0)}.parquet")
        with open(self.appends_to, "a", encoding="utf-8") as fh:
            fh.write(_jsonl(records))
            fh.flush()
            os.fsync(fh.fileno())

    def copy_outputs_from(self, other: Path) -> None:
        """Take the decoded samples and trace of a finished run with the same outputs (trace first:
        the sample lines mark the samples done, as in `append`)."""
        self.parts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(other) / "tokens.parquet", self.parts / ".tokens-reused.tmp")
        os.replace(self.parts / ".tokens-reused.tmp", self.parts / "tokens-reused.parquet")
        atomic_write_text(self.samples_path, (Path(other) / "samples.jsonl").read_text(encoding="utf-8"))

    def finalize(self, records: list[dict], metrics: dict) -> None:
        """Scored samples, one trace file, then metrics.json (the run is finished once it exists)."""
        import pandas as pd

        atomic_write_text(self.samples_path, _jsonl(records))
        order = {output_key(r): i for i, r in enumerate(records)}
        parts = sorted(self.parts.glob("tokens-*.parquet")) if self.parts.is_dir() else []
        if not parts and (self.path / "tokens.parquet").is_file():  # finished before (a rescore): keep its trace
            parts = [self.path / "tokens.parquet"]
        frames = [indexed(pd.read_parquet(p)) for p in parts]
        empty: dict[str, list] = {"sample_id": [], "sample": [], "step": []}
        tokens = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(empty)
        position = pd.Series(trace_keys(tokens), index=tokens.index).map(order)
        tokens = tokens[position.notna()].assign(_order=position).drop_duplicates(["sample_id", "sample", "step"])
        # output order, then step: the file does not depend on how the outputs were batched
        tokens = tokens.sort_values(["_order", "step"], kind="stable").drop(columns="_order").reset_index(drop=True)
        _write_parquet(tokens, self.path / "tokens.parquet")
        atomic_write_json(self.metrics_path, metrics)
        shutil.rmtree(self.parts, ignore_errors=True)
