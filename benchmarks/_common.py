"""Helpers shared by the benchmark scripts: machine state, matmul peak, timing, memory, output.

Every measurement is printed with the machine's load average (``os.getloadavg()``): on a
shared CPU the load of other processes changes timings by more than most effects measured.
"""
from __future__ import annotations

import ctypes
import os
import resource
import statistics
import threading
import time
from collections import Counter
from typing import Any, Callable

import torch
from torch import nn


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: CPU count, threads, torch version, GPU name, load now."""
    from ciard_bench.utils import git_revision

    info = {"torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "load_average": load_average(), "git_revision": git_revision()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock interval covers the work (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """``fn()``, its wall time and this process's CPU time in seconds (device synchronised).

    With one thread on a shared CPU the CPU time is the robust measure: preemption by other
    processes stretches the wall time but not the CPU time (with more threads it also holds
    OpenMP spin-waiting).
    """
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start, time.process_time() - cpu


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                seconds: float = 2.0) -> dict[str, Any]:
    """Dense ``torch.mm`` throughput for about ``seconds``: this machine's practical peak.

    Square matrices (2048 on CPU, 8192 on CUDA), 2 n^3 FLOPs per call; the median per-call
    rate is reported (robust to a call slowed by another process).
    """
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timed(lambda: torch.mm(a, b), device)                       # first call: allocation, tuning
    rates, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(rates) < 3:
        _, dt, _ = timed(lambda: torch.mm(a, b), device)
        rates.append(2 * n ** 3 / dt)
    return {"gflops": statistics.median(rates) / 1e9, "best_gflops": max(rates) / 1e9,
            "n": n, "calls": len(rates), "dtype": str(dtype).replace("torch.", ""),
            "load_average": load_average()}


def _release_freed_memory() -> None:
    # glibc keeps freed heap pages; without a trim the RSS before a step still holds the
    # previous step's activations and the step's own increase is understated.
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def max_rss_mb() -> float:
    """Process-lifetime peak RSS (``getrusage``; kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemoryMeter:
    """Peak memory of one step: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the
    resident set size, sampled every 5 ms from ``/proc/self/statm`` by a thread (the
    operators release the GIL), after handing freed heap pages back with ``malloc_trim``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.before = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def __enter__(self) -> "MemoryMeter":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            _release_freed_memory()
            self.before = self.peak = _rss_bytes() or 0
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes() or 0)

    def result(self) -> dict[str, float]:
        kind = "cuda_max_memory_allocated" if self.device.type == "cuda" else "rss_sampled"
        return {"kind": kind, "before_mb": self.before / 2**20, "peak_mb": self.peak / 2**20,
                "step_increase_mb": (self.peak - self.before) / 2**20}


ACCOUNTING = ("FLOPs = sum over models of F(model) x (forward images + 2 x images in full "
              "backwards + 1 x images in input-only backwards), F = forward FLOPs per image from "
              "torch.utils.flop_counter (multiply-add = 2, eval mode); a full backward (input and "
              "weight gradients) ~ 2 forwards, an input-only backward (autograd.grad w.r.t. the "
              "input, as in PGD) ~ 1 forward; losses, optimiser and BatchNorm updates are not "
              "counted.")


def forward_equivalents(p: dict) -> float:
    """Passes of one model (``PassCounter`` keys) in units of its forward, as ACCOUNTING says."""
    return p["forward"] + 2 * p["backward_full"] + p["backward_input"]


class PassCounter:
    """Forward/backward passes per model, counted in images, with hooks on the top modules.

    A forward that builds a graph gets a hook on its output, called when a backward reaches
    it; the backward is *full* when it will also accumulate the model's weight gradients
    (``torch._C._will_engine_execute_node`` on a parameter's AccumulateGrad node), else it is
    input-only (PGD's ``autograd.grad`` w.r.t. the input).
    """

    def __init__(self, models: dict[str, nn.Module]):
        self.counts = {role: Counter() for role in models}
        self.handles = [m.register_forward_hook(self._hook(role)) for role, m in models.items()]

    def _hook(self, role: str):
        def forward_hook(module, inputs, out):
            c, n = self.counts[role], out.shape[0]
            c["forward"] += n
            if not (torch.is_grad_enabled() and out.requires_grad):
                return
            c["graph"] += n
            p = next((p for p in module.parameters() if p.requires_grad), None)
            acc = p.view_as(p).grad_fn.next_functions[0][0] if p is not None else None

            def backward_hook(grad):
                full = acc is not None and torch._C._will_engine_execute_node(acc)
                c["backward_full" if full else "backward_input"] += grad.shape[0]
            out.register_hook(backward_hook)
        return forward_hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else f"{c:.4g}"
                                          if isinstance(c, float) else str(c) for c in r]
                                         for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str | None, obj: dict) -> None:
    """Write the result JSON (atomically) when ``path`` is given."""
    if path:
        from ciard_bench.checkpoint import atomic_write_json

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_json(path, obj)
