"""What the benchmarks say about the machine they ran on."""

import platform


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
