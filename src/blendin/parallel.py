"""One run over several processes: their places, the items each decodes, and how a fault ends them all.

`torchrun --nproc-per-node N -m blendin.run ... parallel.tp=T` (or srun + torchrun over several nodes)
starts N processes, each with its RANK, WORLD_SIZE and LOCAL_RANK in the environment. They form N / T
groups of T consecutive ranks:

- A group's T processes hold one copy of the models, the base (and the aligned model) split over them
  by transformers' tensor-parallel plans, and decode the same rows: every rank sees the same gathered
  logits and so chooses the same tokens. The group's processes talk through a process group of their
  own (NCCL on GPUs, gloo on CPUs); groups never wait on each other in a collective.
- The groups decode different outputs: the run's pending outputs, in run order, are dealt out
  round-robin (output i to group i mod G). The pending list is read from the run directory when the
  session starts, so a run resumed with another N deals out what is left: nothing lost, nothing done
  twice.
- Rank 0 writes what is written once (config.yaml, identity.json, the final files and metrics.json);
  each group's first rank stores its group's outputs (`store.RunStore` gives it a file of its own).

Every process shares one key-value store (the launcher's rendezvous store) for the little they must
agree on: rank 0's plan of the session, barriers, and faults. A rank that fails records its cause there
before it exits; each rank beats a counter there and watches its neighbour's, so that a rank that dies
without a word (SIGKILL, the kernel's out-of-memory killer, a lost node) is noticed within
`parallel.timeout_s`. Every other rank then ends with a message naming the rank and the cause, never
hanging in a collective. On one node torchrun's own agent ends the other workers at once when one dies
(and prints which one and why); the watch covers several nodes and launches without torchrun's agent.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .errors import BlendinError, ConfigError

log = logging.getLogger("blendin.parallel")
PREFIX = "blendin/"
POLL_S = 0.05  # how often a waiting rank looks at the store


class RankFailed(BlendinError):
    """Another process of the run failed; this one stops."""


@dataclass(frozen=True)
class Place:
    """Where this process sits, as its launcher's environment says (RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


def place() -> Place:
    """This process's place: torchrun's variables; else those of a SLURM step with several tasks (srun
    starting every rank itself); else one process."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return Place(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env and "SLURM_JOB_NODELIST" in env:
        return Place(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return Place()


def _export_slurm_rendezvous() -> None:
    """srun without torchrun: the store lives on rank 0, on the first node of the job."""
    import subprocess

    env = os.environ
    if "MASTER_ADDR" not in env:
        try:
            nodes = subprocess.run(
                ["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True, text=True
            ).stdout.split()
        except OSError:  # no scontrol here: a plain list of host names
            nodes = []
        env["MASTER_ADDR"] = nodes[0] if nodes else env["SLURM_JOB_NODELIST"].split(",")[0]
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    p = place()
    env.update(RANK=str(p.rank), WORLD_SIZE=str(p.world), LOCAL_RANK=str(p.local_rank))


def check_parallel(tp, timeout_s, device="auto") -> None:
    """`parallel.tp` and `parallel.timeout_s` against the processes this command was started as."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"parallel.tp={tp!r} must be a positive integer (1 = each process holds whole models)")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s < 1:
        raise ConfigError(f"parallel.timeout_s={timeout_s!r} must be a number of seconds >= 1")
    world = place().world
    if tp > 1 and world == 1:
        raise ConfigError(
            f"parallel.tp={tp} splits each model over {tp} processes, and this is one process. Fix: start it "
            f"with torchrun: torchrun --nproc-per-node {tp} -m blendin.run ... parallel.tp={tp}"
        )
    if world % tp:
        raise ConfigError(
            f"parallel.tp={tp} does not divide the {world} processes of this run into groups of {tp}. "
            f"Fix: a parallel.tp that divides {world}, or --nproc-per-node a multiple of {tp}"
        )
    if world > 1 and str(device).startswith("cuda:"):
        raise ConfigError(
            f"device={device} with {world} processes would put every process on one GPU; each process takes "
            "the GPU of its local rank. Fix: device=auto (or device=cuda)"
        )


def check_splittable(config, tp: int, role: str, source: str) -> None:
    """Refuse, from a model's config alone (no weights), a model that `tp` processes cannot split:
    one without a tensor-parallel plan, or whose attention heads or key-value heads `tp` does not divide."""
    if tp == 1:
        return
    text = config.get_text_config()
    if not getattr(text, "base_model_tp_plan", None):
        raise ConfigError(
            f"parallel.tp={tp}: the {role} model {source} ({type(text).__name__}) has no tensor-parallel plan in "
            "transformers, so it cannot be split. Fix: parallel.tp=1 (data parallel: each process holds whole "
            "models), or a model family that has one (Llama, Qwen, Gemma, Mistral, ...)"
        )
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    if heads % tp or kv_heads % tp:
        raise ConfigError(
            f"parallel.tp={tp}: the {role} model {source} has {_count(heads, 'attention head')} and "
            f"{_count(kv_heads, 'key-value head')}, and tensor parallelism gives each process an equal share of "
            f"both; {tp} does not divide {heads if heads % tp else kv_heads}. Fix: a parallel.tp that divides both "
            "(parallel.tp=1: data parallel, each process holds the whole model)"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def split_roles(roles, tp: int, guidance: str = "whole") -> list[str]:
    """The models of `roles` that parallel.tp=tp splits: the base and aligned models, and the guidance
    model (and its untuned twin) only with parallel.guidance=split (small: by default every process holds
    them whole)."""
    if tp == 1:
        return []
    return [role for role in roles if role not in ("guidance", "guidance_untuned") or guidance == "split"]


@dataclass
class Ranks:
    """This process's place in the run and the store the processes share (see the module doc).
    One process (the default): group 0 of 1, rank 0, and every method below does nothing."""

    rank: int = 0
    world: int = 1
    tp: int = 1
    local_rank: int = 0
    store: Any = field(default=None, repr=False)
    calls: int = 0  # the store operations made so far: every rank makes the same ones in the same order

    @property
    def groups(self) -> int:
        return self.world // self.tp

    @property
    def group(self) -> int:
        return self.rank // self.tp

    @property
    def main(self) -> bool:
        """Rank 0: writes what is written once."""
        return self.rank == 0

    @property
    def leader(self) -> bool:
        """The first rank of its group: stores the group's outputs."""
        return self.rank % self.tp == 0

    @property
    def writer(self) -> str | None:
        """The name of this group's own file of outputs (`RunStore`); None for a run of one group."""
        return f"group{self.group}" if self.groups > 1 else None

    def share(self, items: list) -> list:
        """This group's share of `items`: item i goes to group i mod G."""
        return items[self.group :: self.groups]

    def _key(self, name: str) -> str:
        self.calls += 1
        return f"{self.calls}/{name}"

    def from_main(self, name: str, compute):
        """Rank 0 computes `compute()` (a JSON-able value), the others wait for it and get the same."""
        if self.store is None:
            return compute()
        key = self._key(name)
        if self.main:
            value = compute()
            self.store.set(key, json.dumps(value))
            return value
        self._wait(key, name)
        return json.loads(self.store.get(key))

    def barrier(self, name: str) -> None:
        """Wait until every rank got here."""
        if self.store is None:
            return
        key = self._key(name)
        if self.store.add(key, 1) == self.world:
            self.store.set(key + "/all", "1")
        self._wait(key + "/all", name)

    def agree_min(self, name: str, value: int) -> int:
        """The smallest `value` any rank has (e.g. the batch size each rank's memory allows)."""
        if self.store is None:
            return value
        key = self._key(name)
        self.store.set(f"{key}/{self.rank}", str(value))
        self.barrier(name)
        return min(int(self.store.get(f"{key}/{r}")) for r in range(self.world))

    def _wait(self, key: str, what: str) -> None:
        assert self.store is not None
        while not self.store.check([key]):
            failed = failures(self.store, self.world)
            if failed:
                raise RankFailed(f"rank {self.rank}: stopping (waiting for {what}), because " + "; ".join(failed))
            time.sleep(POLL_S)

    def fail(self, error: BaseException) -> None:
        """Record why this rank fails, for the others' messages."""
        if self.store is not None and not isinstance(error, RankFailed):
            record_failure(self.store, self.rank, f"{type(error).__name__}: {error}".strip()[:2000])


def record_failure(store, rank: int, cause: str) -> None:
    store.set(f"failed/{rank}", cause)
    store.add("failures", 1)


def failures(store, world: int) -> list[str]:
    """'rank R: cause' for every rank recorded as failed."""
    if not store.add("failures", 0):
        return []
    return [
        f"rank {r} failed: {store.get(f'failed/{r}').decode()}" for r in range(world) if store.check([f"failed/{r}"])
    ]


_RANKS = Ranks()


def ranks() -> Ranks:
    """This process's `Ranks` (one process until `setup` ran)."""
    return _RANKS


def setup(tp: int = 1, timeout_s: float = 60.0, device: str = "auto") -> Ranks:
    """Join the run's other processes (once per process; a later call with the same tp returns the same).

    Connects to the launcher's store, starts the heartbeat watch, and for tp > 1 makes this group's
    process group (NCCL on GPUs, gloo on CPUs), which transformers then splits the models over.
    """
    global _RANKS
    here = place()
    if here.world == 1:
        return _RANKS
    if _RANKS.store is not None:
        if _RANKS.tp != tp:
            raise ConfigError(
                f"parallel.tp={tp}, and this process already decodes with parallel.tp={_RANKS.tp}: the processes "
                "of one launch keep one split. Fix: one parallel.tp per torchrun command"
            )
        return _RANKS
    import torch
    import torch.distributed as dist

    if "MASTER_ADDR" not in os.environ or "RANK" not in os.environ:
        _export_slurm_rendezvous()
    store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=max(300, timeout_s))))
    shared = dist.PrefixStore(PREFIX, store)
    _RANKS = Ranks(here.rank, here.world, tp, here.local_rank, shared)
    if tp > 1:
        cuda = torch.cuda.is_available() and str(device) != "cpu"
        if cuda:
            torch.cuda.set_device(here.local_rank)
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            store=dist.PrefixStore(f"tp{_RANKS.group}/", shared),
            rank=here.rank % tp,
            world_size=tp,
        )
    if not _RANKS.main:  # one voice: rank 0 logs the run's progress, the others only what goes wrong
        logging.getLogger().setLevel(logging.WARNING)
    watch = _Watch(_RANKS, timeout_s)
    watch.start()
    _on_sigterm(_RANKS)
    atexit.register(_leave, watch)
    log.info("rank %d of %d: group %d of %d (tp=%d)", here.rank, here.world, _RANKS.group, _RANKS.groups, tp)
    return _RANKS


def local_device(device: str) -> str:
    """The device this process decodes on: under several processes, auto and cuda mean the GPU of the
    local rank."""
    r = ranks()
    if r.world > 1 and str(device) in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{r.local_rank}"
    return device


def _leave(watch: "_Watch") -> None:
    """At a clean exit: stop this rank's watch (a thread left inside a store call while the interpreter
    shuts down aborts the process), and tell the rank watching this one not to expect more heartbeats.
    Rank 0, which may hold the store itself (srun without torchrun), waits briefly for the others."""
    watch.stopping.set()
    watch.join(timeout=10)
    r = ranks()
    if r.store is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    try:
        r.store.set(f"left/{r.rank}", "1")
        left = r.store.add("left", 1)
        deadline = time.monotonic() + 30
        while r.main and left < r.world and time.monotonic() < deadline:
            time.sleep(POLL_S)
            left = r.store.add("left", 0)
    except Exception:  # noqa: BLE001 - the store may be gone already; nothing is left to coordinate
        pass


def _end(rank: int, message: str, code: int = 1) -> None:
    print(f"error: rank {rank}: {message}", file=sys.stderr, flush=True)
    os._exit(code)


class _Watch(threading.Thread):
    """Beat this rank's counter in the store, and end this rank when another one failed: recorded by
    itself, or silent (its counter stood still for `timeout_s`: each rank watches the next one)."""

    def __init__(self, ranks: Ranks, timeout_s: float):
        super().__init__(name="blendin-watch", daemon=True)
        self.rank, self.world, self.timeout = ranks.rank, ranks.world, float(timeout_s)
        self.interval = min(1.0, self.timeout / 10)
        self.stopping = threading.Event()

    def run(self) -> None:
        import torch.distributed as dist

        address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        try:  # a connection of its own: the main thread may be blocked in a store call
            host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            client = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=30))
            store = dist.PrefixStore(PREFIX, client)
        except Exception as err:  # noqa: BLE001
            _end(self.rank, f"cannot reach the run's store at {address}: {err}")
            return
        watched = (self.rank + 1) % self.world
        seen, since = -1, time.monotonic()
        while not self.stopping.is_set():
            try:
                store.add(f"beat/{self.rank}", 1)
                failed = failures(store, self.world)
                if failed:
                    _end(self.rank, "stopping, because " + "; ".join(failed))
                count = store.add(f"beat/{watched}", 0)
                now = time.monotonic()
                if count != seen:
                    seen, since = count, now
                elif now - since > self.timeout and not store.check([f"left/{watched}"]):
                    cause = (
                        f"no sign of life for {self.timeout:.0f} s (killed, out of host memory, or its node was lost)"
                    )
                    record_failure(store, watched, cause)
                    _end(self.rank, f"stopping, because rank {watched} failed: {cause}")
            except Exception as err:  # noqa: BLE001 - any store error means the run's coordination is gone
                _end(
                    self.rank,
                    f"lost the run's store at {address} ({type(err).__name__}): the launcher, or the process "
                    "or node that held it, has ended",
                )
            self.stopping.wait(self.interval)


def _on_sigterm(r: Ranks) -> None:
    """torchrun's agent stops the other workers with SIGTERM when one fails: say so, with the cause if
    the failed rank recorded one (a killed rank cannot: torchrun's report names it and its signal)."""

    def stop(signum, frame):
        cause = ""
        try:
            cause = "; ".join(failures(r.store, r.world))
        except Exception:  # noqa: BLE001
            pass
        _end(
            r.rank,
            "stopped by the launcher (SIGTERM) because another process of the run ended"
            + (f": {cause}" if cause else " (torchrun's failure report names the rank and its exit code or signal)"),
            code=128 + signal.SIGTERM,
        )

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
