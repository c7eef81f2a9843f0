"""Timing and peak-memory helpers shared by the benchmarks."""
from __future__ import annotations

import gc
import statistics
import threading
import time
from typing import Callable, Tuple

import psutil


class PeakRSS:
    """Samples the process's resident memory in a thread; ``peak - baseline`` is what ran added."""

    def __init__(self, interval: float = 0.002):
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.baseline = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def added_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20


def time_and_peak(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Tuple[float, float]:
    """Median milliseconds of ``fn`` over ``repeats`` runs and the peak memory it added (MiB)."""
    for _ in range(warmup):
        fn()
    gc.collect()
    times = []
    with PeakRSS() as mem:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), mem.added_mib
