"""Timing and peak-memory helpers shared by the benchmarks.

Peak memory is read as the growth of the process's high-water resident set while the measured
code runs, each measurement in a fresh interpreter: sampling RSS from a thread both misses short
peaks and reads nothing once the allocator has cached pages from an earlier run. The high-water
mark is this process image's own (``VmHWM``), reset to the current RSS just before the
measurement where the kernel allows it: ``ru_maxrss`` would also count the RSS of the parent at
the moment it forked the child (Linux keeps it across exec), so a large parent made every child
report the parent's size.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import psutil

BENCHMARK_SCRIPT = Path(__file__).resolve().parents[1] / "benchmark.py"


def current_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """The high-water resident set of this process image (``VmHWM`` of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset the high-water mark to the current RSS (Linux >= 4.0; silently kept where refused)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def time_and_peak(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Dict[str, float]:
    """Median wall and CPU milliseconds of ``fn`` and the peak memory (MiB) it added to this process.

    CPU time (``time.process_time``: every thread of the process) is the steadier number on a
    shared machine, where other jobs stretch the wall time. Meant to run in a fresh process (see
    :func:`run_isolated`): the peak is the high-water mark reached while ``fn`` ran minus the
    resident set just before it.
    """
    reset_peak_rss()
    baseline = current_rss_bytes()
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return {"ms": statistics.median(times), "cpu_ms": statistics.median(cpu),
            "peak_mib": max(0, peak_rss_bytes() - baseline) / 2**20}


def run_isolated(args: List[str]) -> Dict[str, float]:
    """Run ``tools/benchmark.py *args`` in a fresh interpreter; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, str(BENCHMARK_SCRIPT), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
