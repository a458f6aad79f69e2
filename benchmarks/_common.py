"""Helpers shared by the benchmark scripts.

- the machine, detected at run time: CPU model and the vector extensions that
  matter to torch's kernels, cores, memory, library versions, load average
  (:func:`environment`, :func:`machine_header`);
- child processes and their peak memory (:func:`run_child`,
  :func:`peak_rss_mib`, :func:`reset_peak_rss`);
- markdown tables and JSON results (:func:`table`, :class:`Report`);
- small statistics of repeated timings (:func:`median`, :func:`spread`).
"""

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: CPU flags (as in /proc/cpuinfo) reported with every table: those that
#: decide which kernels torch and oneDNN can use.
_INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve",
)


# --------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------
def _cpuinfo_field(*keys):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model():
    """The CPU model name, read at run time."""
    return _cpuinfo_field("model name", "Model name", "Hardware") or platform.processor() or "unknown"


def cpu_flags():
    """The vector extensions of :data:`_INTERESTING_FLAGS` this CPU has."""
    flags = set((_cpuinfo_field("flags", "Features") or "").split())
    return [f for f in _INTERESTING_FLAGS if f in flags]


def torch_cpu_capability():
    """The instruction set torch's CPU kernels dispatch to (e.g. 'AVX2'), or None."""
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch, or no torch
        return None


def _ram_gib():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def load_average():
    try:
        return "%.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        return "n/a"


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command():
    """The command line that runs this script, from the repository root."""
    script = os.path.abspath(sys.argv[0])
    if script.startswith(REPO + os.sep):
        script = os.path.relpath(script, REPO)
    return " ".join(["python", script, *sys.argv[1:]])


def environment(packages=()):
    """The machine and library versions, as a JSON-able dict.

    ``packages``: distributions whose versions are reported besides skpadim,
    torch, torchvision, numpy and scikit-learn.
    """
    import torch

    import skpadim

    versions = {p: _version(p) for p in ("torch", "torchvision", "numpy", "scikit-learn", *packages)}
    versions["skpadim"] = getattr(skpadim, "__version__", None)
    return dict(
        cpu=cpu_model(),
        cpu_flags=cpu_flags(),
        torch_cpu_capability=torch_cpu_capability(),
        cores=os.cpu_count(),
        memory_gib=_ram_gib(),
        system=f"{platform.system()} {platform.machine()}",
        python=platform.python_version(),
        torch_threads=torch.get_num_threads(),
        versions=versions,
        command=_command(),
        load_average_at_start=load_average(),
    )


def machine_header(env, extra=()):
    """Markdown lines describing ``env`` (from :func:`environment`)."""
    ram = "?" if env["memory_gib"] is None else f"{env['memory_gib']:.1f}"
    flags = " ".join(env["cpu_flags"]) or "none detected"
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v is not None)
    lines = [
        f"- machine: {env['cores']} cores (nproc), {env['cpu']}, {ram} GiB RAM, {env['system']}",
        f"- CPU flags: {flags}; torch kernels: {env['torch_cpu_capability'] or 'n/a'}",
        f"- python {env['python']}, {versions}; torch threads {env['torch_threads']}",
        f"- command: `{env['command']}`",
        f"- load average (1, 5, 15 min) at start: {env['load_average_at_start']}",
    ]
    return lines + [f"- {line}" for line in extra]


# --------------------------------------------------------------------------
# Child processes and their peak memory
# --------------------------------------------------------------------------
def _status_kib(key):
    """A line of /proc/self/status in KiB (None where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib():
    """This process's resident set size now, in MiB (None where unavailable)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib():
    """This process's own peak resident set size, in MiB.

    Read from ``VmHWM`` (Linux), the high-water mark of this process's
    memory image since it started (or since :func:`reset_peak_rss`).
    ``getrusage``'s ``ru_maxrss`` is not used where VmHWM exists: Linux
    carries the pre-``exec`` high-water mark into it, so in a child it is
    at least the parent's resident size when the child was started.
    """
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def reset_peak_rss():
    """Restart :func:`peak_rss_mib` from the current size; False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_child(args, *, log=None, in_process=False):
    """Run ``python args...`` in a fresh interpreter.

    Returns a dict: ``returncode``, ``wall_s``, ``stdout`` (text; also
    ``stderr`` unless ``log``, an open file, receives it), and
    ``ru_maxrss_mib`` (``os.wait4``). The last is the child's peak only when
    it is above ``parent_rss_mib`` (this process's size when the child was
    started): see :func:`peak_rss_mib`, which a child should report itself.

    ``in_process=True`` (the scripts' ``--quick`` smoke runs, which the test
    suite runs) calls the script's ``main(args[1:])`` in this process
    instead: the same code path without an interpreter and torch to start;
    its peak memory is then this process's (reset first where Linux allows),
    which includes everything the process held before.
    """
    if in_process:
        return _run_in_process(args, log)
    cmd = [sys.executable, *[str(a) for a in args]]
    parent = rss_mib()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=log or err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it: proc.wait() must not be called
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        result = dict(
            returncode=proc.returncode,
            wall_s=wall,
            stdout=out.read(),
            ru_maxrss_mib=usage.ru_maxrss / 1024,  # KiB on Linux
            parent_rss_mib=parent,
        )
        if log is None:
            result["stderr"] = err.read()
    return result


_SCRIPTS = {}


def load_script(path):
    """The benchmark script at ``path`` as a module (imported once; its ``main`` not run)."""
    import importlib.util

    path = os.path.abspath(str(path))
    module = _SCRIPTS.get(path)
    if module is None:
        name = "_bench_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[path] = module
    return module


def _run_in_process(args, log):
    import contextlib
    import io

    main = load_script(args[0]).main
    reset_peak_rss()
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(log or err):
        try:
            code = main([str(a) for a in args[1:]]) or 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    result = dict(returncode=code, wall_s=time.perf_counter() - t0, stdout=out.getvalue(),
                  ru_maxrss_mib=peak_rss_mib(), parent_rss_mib=0.0)
    if log is None:
        result["stderr"] = err.getvalue()
    return result


# --------------------------------------------------------------------------
# Tables and results
# --------------------------------------------------------------------------
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


def emit(lines):
    for line in lines:
        print(line, flush=True)


def write_json(path, data):
    """Write ``data`` as JSON to ``path`` through a temporary file (never half-written)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Report:
    """What a benchmark prints, kept to be written as JSON too.

    :meth:`text` prints markdown lines; :meth:`table` prints a markdown table
    and keeps its cells under a key; :meth:`record` keeps raw results (numbers
    before formatting) for the tests and for later analysis. :meth:`save`
    writes ``{"environment", "tables", "results"}``.
    """

    def __init__(self, env):
        self.env = env
        self.tables = {}
        self.results = {}

    def text(self, lines):
        emit(lines)

    def table(self, key, header, rows):
        rows = [[str(c) for c in r] for r in rows]
        self.tables[key] = {"header": [str(h) for h in header], "rows": rows}
        emit(table(header, rows))

    def record(self, key, value):
        self.results[key] = value

    def save(self, path):
        if path:
            write_json(path, {"environment": self.env, "tables": self.tables, "results": self.results})

    def finish(self, t_start, path):
        """Print the load average and the run's wall time; write the JSON file when ``path`` is given."""
        total = time.perf_counter() - t_start
        self.record("total_s", total)
        self.text(["", f"load average at end: {load_average()}; total wall time {total:.0f} s"])
        self.save(path)
