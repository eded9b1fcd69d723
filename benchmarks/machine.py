"""What the benchmarks say about the machine they ran on, and how much memory they took."""

import os
import platform
import threading
import time


def cpu_name():
    """The CPU's model name, e.g. "AMD EPYC 7B13", for the first line of a table."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resident_bytes():
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakResident:
    """Samples resident memory in a thread; `.peak` is the highest seen."""

    def __enter__(self):
        self.peak = self.start = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
