"""Peak resident memory of this process over a stretch of code, sampled by a thread (CPU benchmarks)."""

from __future__ import annotations

import threading
import time

import psutil


class RssPeak:
    """`start()`, run the code, `stop()` -> (peak RSS above the RSS at start, peak RSS), in bytes.

    Sampled every `interval` seconds (plus once at start and stop), so a peak shorter than that can be missed;
    PyTorch's CPU allocator returns large blocks to the OS when they are freed, so the peak of a step's
    temporaries shows up here (tracemalloc would not see them: they are not Python allocations)."""

    def __init__(self, interval: float = 0.002):
        self.proc, self.interval = psutil.Process(), interval
        self.peak = self.start_rss = 0
        self._stop, self._thread = threading.Event(), None

    def start(self) -> None:
        self.start_rss = self.peak = self.proc.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return self.peak - self.start_rss, self.peak
