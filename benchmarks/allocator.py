"""Does glibc's allocator tuning still pay, and in which form?

A CNN forward pass allocates dozens of large, short-lived buffers per batch;
glibc serves each above its mmap threshold with its own ``mmap`` and unmaps
it when freed, so every batch faults its memory in again. Three ways to run
the same ``fit`` and ``score_samples``, each in a fresh process (allocator
settings are process-wide and sticky), interleaved round by round:

* ``glibc defaults``: what skpadim does now (it leaves the allocator alone);
* ``in-call mallopt``: what skpadim did before, reproduced here: around each
  call, ``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` and ``mallopt(M_TRIM_THRESHOLD,
  INT_MAX)``, then back to 128 KiB and ``malloc_trim(0)``. Per mallopt(3)
  the first call switches glibc's dynamic threshold off for the rest of the
  process, which is why the library no longer does this;
* ``GLIBC_TUNABLES``: the same thresholds set by the user for the whole
  process at start-up (``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=
  1073741824:glibc.malloc.trim_threshold=2147483647``), the opt-in
  documented in docs/design.md.

Reported: medians of wall seconds, CPU seconds (user + system, less
sensitive to other jobs on the machine) and minor page faults per image,
and CPU-time ratios to the glibc defaults.

Usage::

    python benchmarks/allocator.py                # resnet18, 224 px, 64 images, 3 rounds
    python benchmarks/allocator.py --quick        # smoke test: 64 px, 16 images, 1 round
"""

import argparse
import json
import os
import subprocess
import sys

from _common import environment, emit, load_average, machine_header, median, table

TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647"
VARIANTS = ("glibc defaults", "in-call mallopt", "GLIBC_TUNABLES")


def child(variant, n, size, batch_size):
    """Measure fit and score_samples in this process; print one JSON line."""
    import contextlib
    import ctypes
    import resource
    import time

    from skpadim import PadimDetector
    from skpadim.datasets import make_anomaly_images

    @contextlib.contextmanager
    def in_call_mallopt():
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD
        try:
            yield
        finally:
            libc.mallopt(-3, 128 * 1024)
            libc.mallopt(-1, 128 * 1024)
            libc.malloc_trim(0)

    wrap = in_call_mallopt if variant == "in-call mallopt" else contextlib.nullcontext
    X, _, _ = make_anomaly_images(n, 0, image_size=size, random_state=0)
    det = PadimDetector(weights=None, image_size=size, batch_size=batch_size, device="cpu", random_state=0)
    with wrap():  # warm-up: oneDNN primitives, first touch of the sums
        det.fit(X[:batch_size])
    with wrap():
        det.score_samples(X[:batch_size])
    out = {}
    for name, call in (("fit", lambda: det.fit(X)), ("score_samples", lambda: det.score_samples(X))):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        with wrap():
            call()
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        out[name] = [wall, cpu, (r1.ru_minflt - r0.ru_minflt) / n]
    print("RESULT " + json.dumps(out), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 64 px, 16 images, 1 round")
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n_images, args.image_size, args.batch_size, args.rounds = 16, 64, 8, 1
    if args.child:
        return child(args.child, args.n_images, args.image_size, args.batch_size)
    if not sys.platform.startswith("linux"):
        raise SystemExit("glibc's allocator: Linux only")
    emit(["## allocator", ""])
    emit(machine_header(environment(), [
        f"resnet18 (weights=None), n_features=100, image_size={args.image_size}, batch_size="
        f"{args.batch_size}, device='cpu'; fit and score_samples on {args.n_images} images "
        f"(make_anomaly_images, random_state=0) after a one-batch warm-up",
        "one fresh process per variant and round, variants interleaved; medians reported",
    ]))
    runs = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            env = dict(os.environ)
            env.pop("GLIBC_TUNABLES", None)
            if v == "GLIBC_TUNABLES":
                env["GLIBC_TUNABLES"] = TUNABLES
            cmd = [sys.executable, os.path.abspath(__file__), "--child", v, "--n-images", str(args.n_images),
                   "--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
            runs[v].append(json.loads(line[len("RESULT "):]))
        print(f"  round {r + 1}/{args.rounds} done; load {load_average()}", file=sys.stderr, flush=True)
    rows = []
    for call in ("fit", "score_samples"):
        base = median([x[call][1] for x in runs[VARIANTS[0]]])
        for v in VARIANTS:
            wall, cpu, faults = (median([x[call][i] for x in runs[v]]) for i in range(3))
            rows.append([call, v, f"{wall:.2f}", f"{cpu:.2f}", f"{faults:,.0f}", f"{base / cpu:.2f}"])
    emit([""] + table(["call", "allocator", "median wall s", "median CPU s", "page faults / image",
                       "CPU-time speed-up vs defaults"], rows))
    emit(["", f"load average at end: {load_average()}"])


if __name__ == "__main__":
    main()
