"""Moving data between the host and the device, in one place so that it can be counted and timed.

On a GPU a copy to the host waits until the device has finished all the work queued before it (a
synchronisation): the host then sits idle while the device drains, and the device idles while the
host prepares the next step. The engine copies to the host once per decoding step, through
`to_host`, and counts it in `SYNCS` (the tests hold a decode step to one). Inputs go the other way
with `to_device`: from pinned memory and without waiting, so that building them costs no
synchronisation either. `Clock` times forward passes without synchronising: on CUDA it records
events and reads them only when asked, after the work is done.
"""

from __future__ import annotations

import time

import numpy as np
import torch


class SyncCounter:
    """How many device-to-host copies the engine made (each one a synchronisation on a GPU)."""

    def __init__(self):
        self.count = 0


SYNCS = SyncCounter()


class PendingCopy:
    """A copy to the host, started now and read later: on CUDA into pinned memory without waiting, so
    that work queued after it (the next forward) is already on its way when `wait` blocks."""

    def __init__(self, tensor: torch.Tensor):
        tensor = tensor.detach()
        self.event = None
        if tensor.device.type == "cuda":
            self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.host.copy_(tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(tensor.device))
        else:
            self.host = tensor.cpu()

    def wait(self) -> np.ndarray:
        SYNCS.count += 1
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """The one way the engine reads device values: a single copy, counted."""
    return PendingCopy(tensor).wait()


def to_device(data, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list or array as a tensor on `device`; on CUDA from pinned memory, without waiting."""
    if device.type != "cuda":
        return torch.as_tensor(data, dtype=dtype, device=device)
    return torch.as_tensor(data, dtype=dtype).pin_memory().to(device, non_blocking=True)


def on_device(device: torch.device):
    """Make `device` the current CUDA device (streams and events are created on the current one)."""
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class Clock:
    """Accumulates the time of named blocks; on CUDA from events, read once at the end (no sync).
    Forward passes are timed only when `enabled` (the benchmark turns it on): a long run would pile
    up CUDA events otherwise."""

    def __init__(self, device: torch.device, enabled: bool = False):
        self.cuda, self.enabled = device.type == "cuda", enabled
        self.seconds: dict[str, float] = {}
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def start(self):
        if not self.enabled:
            return None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, name: str, started) -> None:
        if started is None:
            return
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((name, started, end))
        else:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def totals(self) -> dict[str, float]:
        """Seconds per name so far (on CUDA this waits for the timed work to finish)."""
        if self._pending:
            torch.cuda.synchronize()  # every timed block, on every stream, has finished
            for name, begin, end in self._pending:
                self.seconds[name] = self.seconds.get(name, 0.0) + begin.elapsed_time(end) / 1000
            self._pending = []
        return dict(self.seconds)
