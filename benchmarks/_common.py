"""Helpers shared by the benchmark scripts: machine description, timing, tables."""

import os
import platform
import statistics
import sys


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def load_average():
    try:
        return "%.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        return "n/a"


def machine_header(extra=None):
    """Markdown lines describing the machine and the library versions."""
    import numpy
    import torch
    import torchvision

    import skpadim

    lines = [
        f"- machine: {os.cpu_count()} cores (nproc), {_cpu_model()}, {_ram_gib():.1f} GiB RAM, "
        f"{platform.system()} {platform.machine()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, numpy {numpy.__version__}, "
        f"skpadim {getattr(skpadim, '__version__', '?')}; torch threads {torch.get_num_threads()}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- load average (1, 5, 15 min) at start: {load_average()}",
    ]
    for line in extra or []:
        lines.append(f"- {line}")
    return lines


def table(header, rows):
    """A markdown table (list of lines)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    out = [fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(r) for r in cells[1:]]
    return out


def median(xs):
    return statistics.median(xs)


def spread(xs):
    """'min-max' of a list of seconds, for the reader to judge the noise."""
    return f"{min(xs):.2f}-{max(xs):.2f}"


class Clock:
    """Accumulates wall time per named stage."""

    def __init__(self):
        self.t = {}

    def add(self, name, seconds):
        self.t[name] = self.t.get(name, 0.0) + seconds


def emit(lines):
    for line in lines:
        print(line, flush=True)
