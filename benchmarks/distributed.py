"""One process against a Dask LocalCluster of 2 workers x 1 thread: fit and score.

Measures, on the same image files (PNG, decoded by whoever fits):

* fit and score throughput of ``PadimDetector.fit`` / ``score_samples`` in
  this process (torch on all cores) and of ``skpadim.distributed.fit`` /
  ``score_samples`` on a LocalCluster of 2 worker processes of 1 thread;
* peak resident memory of the client and of each worker during each call
  (sampled every 10 ms by a thread in each process);
* bytes moved between processes per image (workers' transfer logs: to other
  workers and to the client; plus what the client scattered);
* where the cluster's time goes (the task stream);
* a projection to 10 and 100 workers for resnet18 / 100 and
  wide_resnet50_2 / 550 channels, from the measured per-image, per-merge
  and per-factorization costs and the sizes of the statistics.

Variants are interleaved within each round; the tables give medians. The
backbone has random weights (``weights=None``): same cost as pretrained.

Usage::

    python benchmarks/distributed.py              # 800 images, resnet18 / 100, 224 px, 3 rounds
    python benchmarks/distributed.py --quick      # smoke test: 16 images, 48 px, 1 round
"""

import argparse
import contextlib
import math
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# This file is named like Dask's package: its folder goes to the end of the
# path, so that "import distributed" finds Dask. This checkout's skpadim goes
# first, for the workers too (they start with this process's path).
sys.path[:] = [os.path.dirname(HERE)] + [p for p in sys.path if os.path.abspath(p or ".") != HERE] + [HERE]

from _common import emit, environment, load_average, machine_header, median, spread, table  # noqa: E402


# ------------------------------------------------------- memory sampling

class _Local:
    """Holds the client's sampler (a worker's is held by the worker object)."""


_LOCAL = _Local()


def sampler_reset(holder=None, dask_worker=None):
    """Start (once) a thread recording this process's peak RSS; reset the peak.

    The state lives on ``holder`` (the client's) or on the worker object.
    """
    import psutil

    holder = holder or dask_worker
    proc = psutil.Process()
    holder._skpadim_peak = holder._skpadim_start = proc.memory_info().rss
    if not hasattr(holder, "_skpadim_sampler"):

        def run():
            while True:
                holder._skpadim_peak = max(holder._skpadim_peak, proc.memory_info().rss)
                time.sleep(0.01)

        holder._skpadim_sampler = threading.Thread(target=run, daemon=True)
        holder._skpadim_sampler.start()


def sampler_peak(holder=None, dask_worker=None):
    """(peak RSS since the reset, RSS at the reset)."""
    holder = holder or dask_worker
    return holder._skpadim_peak, holder._skpadim_start


def outgoing(workers, dask_worker=None):
    """(bytes sent to other workers, bytes sent to others: the client) since the worker started."""
    peers = other = 0
    for entry in dask_worker.transfer_outgoing_log:
        if entry["who"] in workers:
            peers += entry["total"]
        else:
            other += entry["total"]
    return peers, other


def _moved(client):
    workers = list(client.scheduler_info()["workers"])
    return client.run(outgoing, workers)


# ------------------------------------------------------------- measuring


def make_images(n, size, folder):
    from PIL import Image

    from skpadim.datasets import make_anomaly_images

    X, _, _ = make_anomaly_images(n, 0, image_size=size, random_state=0)
    paths = []
    for i, img in enumerate(X):
        path = os.path.join(folder, f"{i:04d}.png")
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def _phases(ts, t0, t1):
    """Seconds per phase of a distributed fit, from the task stream (worker clocks)."""
    spans = {}
    busy = {}
    for task in ts:
        key = task["key"]
        kind = (key[0] if isinstance(key, tuple) else key).rsplit("-", 1)[-1]
        for ss in task["startstops"]:
            spans.setdefault((kind, ss["action"]), []).append((ss["start"], ss["stop"]))
            busy[(kind, ss["action"])] = busy.get((kind, ss["action"]), 0.0) + ss["stop"] - ss["start"]

    def first(kind):
        return min(a for a, _ in spans[(kind, "compute")])

    def last(kind):
        return max(b for _, b in spans[(kind, "compute")])

    phases = [
        ("client: build the backbone, draw the keys, scatter the model", first("partition") - t0),
        ("partitions: stream the images (both workers)", last("partition") - first("partition")),
        ("tail: last merges, precisions, held-out distances", last("final") - last("partition")),
        ("client: receive the blocks, assemble the detector", t1 - last("final")),
    ]
    return phases, busy


def run_fit_local(params, paths):
    from skpadim import PadimDetector

    sampler_reset(_LOCAL)
    t = time.perf_counter()
    det = PadimDetector(**params).fit(paths)
    return det, time.perf_counter() - t, sampler_peak(_LOCAL)


def run_fit_cluster(params, paths, client, partition_size):
    from distributed import get_task_stream

    from skpadim import PadimDetector
    from skpadim import distributed as skd

    before = _moved(client)
    client.run(sampler_reset)
    sampler_reset(_LOCAL)
    t0 = time.time()
    with get_task_stream(client=client) as ts:
        det = skd.fit(PadimDetector(**params), paths, client=client, partition_size=partition_size)
    t1 = time.time()
    peaks = client.run(sampler_peak)
    after = _moved(client)
    moved = [sum(after[w][i] - before[w][i] for w in after) for i in (0, 1)]
    return det, t1 - t0, sampler_peak(_LOCAL), sorted(peaks.values()), moved, _phases(ts.data, t0, t1)


def run_score_local(det, paths):
    sampler_reset(_LOCAL)
    t = time.perf_counter()
    scores = det.score_samples(paths)
    return scores, time.perf_counter() - t, sampler_peak(_LOCAL)


def run_score_cluster(det, paths, client, partition_size):
    from skpadim import distributed as skd

    before = _moved(client)
    client.run(sampler_reset)
    sampler_reset(_LOCAL)
    t = time.perf_counter()
    scores = skd.score_samples(det, paths, client=client, partition_size=partition_size)
    elapsed = time.perf_counter() - t
    after = _moved(client)
    moved = [sum(after[w][i] - before[w][i] for w in after) for i in (0, 1)]
    return scores, elapsed, sampler_peak(_LOCAL), sorted(client.run(sampler_peak).values()), moved


# ----------------------------------------------------------- projection


def unit_costs(d, n_positions_probe, seed=0):
    """Seconds per patch position, one thread: merge two partitions' sums (as the
    tree's tasks do, from and to arrays); precisions and held-out distances."""
    import torch

    from skpadim._engine.gaussian import GaussianStats
    from skpadim.distributed import _worker

    g = torch.Generator().manual_seed(seed)
    P = n_positions_probe

    def block(n):
        s = GaussianStats.empty(P, d, "cpu")
        s.update(torch.randn(P, d, n, generator=g) + 3)
        return {"n": s.n, **_worker.stats_arrays(s, 0, P)}

    a, b = block(2 * d), block(2 * d)
    with _one_thread(), torch.inference_mode():
        t = time.perf_counter()
        merged = _worker.merge_blocks(a, b)
        merge = (time.perf_counter() - t) / P
        stats = _worker.to_stats(merged)
        emb = torch.randn(P, d, 16, generator=g) + 3
        t = time.perf_counter()
        stats.precision(0.01)
        stats.distances_of(emb, 0.01, held_out=False)
        final = (time.perf_counter() - t) / P
    return merge, final


class _one_thread:
    def __enter__(self):
        import torch

        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.n)


def stream_cost(backbone, n_features, size, n_images):
    """Seconds per image of a partition's streaming, one thread, decoding excluded.

    Two partitions of different sizes through ``accumulate`` (what a
    partition task runs); the difference of their times over the difference
    of their sizes leaves out the fixed costs (allocating the sums, the
    first batch).
    """
    from types import SimpleNamespace

    import numpy as np

    from skpadim import PadimDetector
    from skpadim._engine import fitting
    from skpadim._engine import params as _params
    from skpadim._engine.images import check_images

    X = (np.random.default_rng(0).random((2 * n_images, size, size, 3)) * 255).astype(np.uint8)
    det = PadimDetector(backbone=backbone, weights=None, n_features=n_features, image_size=size,
                        batch_size=32, device="cpu", random_state=0)
    params = SimpleNamespace(**_params.validated(det))
    with _one_thread():
        state = fitting.start(params, check_images(X[:1]))
        rng = np.random.default_rng(0)
        times = []
        for n in (n_images, 2 * n_images):
            t = time.perf_counter()
            fitting.accumulate(state, check_images(X[:n]), params, rng.random)
            times.append(time.perf_counter() - t)
    # The difference leaves out the fixed costs, but on a loaded machine it can be
    # noise (even negative): then the larger run's time per image, an upper bound.
    diff = (times[1] - times[0]) / n_images
    return diff if diff > 0.5 * times[1] / (2 * n_images) else times[1] / (2 * n_images)


def projection(costs, n_images, bandwidth, split_every=4):
    """Rows of the paper projection: per backbone and worker count."""
    from skpadim.distributed._fit import position_bounds

    rows = []
    for name, (P, d, per_image, merge, final) in costs.items():
        stats = 4 * P * d * d + 12 * P * d  # float32 sums of outer products + shift + sums
        to_client = 8 * P * d * d + 20 * P * d  # sums of outer products + precisions + vectors
        for n in (10, 100):
            blocks = len(position_bounds(P, d, n_threads=n))
            parts = 2 * n
            depth = math.ceil(math.log(parts, split_every))
            stream = n_images * per_image / n
            # Tree: each level merges split_every children per block; blocks run in parallel
            # on different workers, one level after the other.
            level = split_every * (merge * P / min(blocks, n) + stats / blocks / bandwidth)
            tree = depth * level
            factor = final * P / min(blocks, n)
            receive = to_client / bandwidth
            moved = parts * stats * split_every / (split_every - 1)
            rows.append([
                name, n, parts, blocks, depth, f"{stream:.0f}", f"{tree:.1f}", f"{factor:.1f}",
                f"{receive:.1f}", f"{stream + tree + factor + receive:.0f}",
                f"{moved / 2**30:.1f}", f"{to_client / 2**30:.2f}",
            ])
    return rows


# ------------------------------------------------------------------ main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 images of 48 px, 1 round (smoke test)")
    ap.add_argument("--n", type=int, default=800, help="images (default 800)")
    ap.add_argument("--size", type=int, default=224, help="image size in px (default 224)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--projection-only", action="store_true",
                    help="only measure the unit costs and print the projection")
    ap.add_argument("--bandwidth", type=float, default=1.25e9,
                    help="bytes/s between machines for the projection (default 1.25e9: 10 Gbit/s)")
    ap.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="use the running cluster at ADDRESS (two 1-thread workers, as the LocalCluster "
                         "this script starts otherwise)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.size, args.rounds = 16, 48, 1
    if args.projection_only:
        emit(machine_header(environment(["dask", "distributed"])))
        _projection(args)
        return
    import numpy as np
    from distributed import Client, LocalCluster

    params = dict(backbone="resnet18", weights=None, n_features=100, image_size=args.size,
                  batch_size=32, device="cpu", random_state=0)
    partition_size = math.ceil(args.n / 4)  # two per worker thread, as the default
    emit(["# skpadim.distributed: one process vs a LocalCluster of 2 workers x 1 thread", ""])
    emit(machine_header(environment(["dask", "distributed"]), [
        "the machine is shared with other engineers' work: compare the ratios of one run, "
        "not absolute times across runs",
        f"resnet18 (random weights), n_features=100, {args.n} PNG images of {args.size} px, "
        f"batch 32, partitions of {partition_size} images, {args.rounds} round(s), medians",
    ]))
    with tempfile.TemporaryDirectory() as folder:
        paths = make_images(args.n, args.size, folder)
        cluster = (contextlib.nullcontext(args.scheduler) if args.scheduler else
                   LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"))
        with cluster as target, Client(target, set_as_default=False) as client:
            # Warm-up, not timed: imports and first calls in every process.
            run_fit_local(params, paths[:8])
            run_fit_cluster(params, paths[:8], client, 4)
            res = {k: [] for k in ("fit1", "fitc", "score1", "scorec")}
            for r in range(args.rounds):
                order = ["fit1", "fitc"] if r % 2 == 0 else ["fitc", "fit1"]
                for key in order:
                    if key == "fit1":
                        local, *rest = run_fit_local(params, paths)
                    else:
                        dist, *rest = run_fit_cluster(params, paths, client, partition_size)
                    res[key].append(rest)
                # The same model: Gaussians, held-out calibration images, offset_.
                np.testing.assert_allclose(dist.mean_, local.mean_, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(dist.offset_, local.offset_, rtol=1e-4)
                order = ["score1", "scorec"] if r % 2 == 0 else ["scorec", "score1"]
                for key in order:
                    if key == "score1":
                        s1, *rest = run_score_local(local, paths)
                    else:
                        sc, *rest = run_score_cluster(local, paths, client, partition_size)
                    res[key].append(rest)
                np.testing.assert_allclose(sc, s1, rtol=1e-4)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    _report(args, res)


def _report(args, res):
    mib = 2**20
    n = args.n
    t1, tc = [r[0] for r in res["fit1"]], [r[0] for r in res["fitc"]]
    s1, sc = [r[0] for r in res["score1"]], [r[0] for r in res["scorec"]]
    rows = [
        ["fit", f"{n / median(t1):.1f}", f"{n / median(tc):.1f}", f"{median(t1) / median(tc):.2f}",
         spread(t1), spread(tc)],
        ["score_samples", f"{n / median(s1):.1f}", f"{n / median(sc):.1f}", f"{median(s1) / median(sc):.2f}",
         spread(s1), spread(sc)],
    ]
    emit(["", "### Throughput, images/s", ""])
    emit(table(["call", "one process", "cluster", "cluster / one process", "one process s (min-max)",
                "cluster s (min-max)"], rows))
    fitc, scorec = res["fitc"][-1], res["scorec"][-1]
    fit1, score1 = res["fit1"][-1], res["score1"][-1]

    def mem(peak_start):
        peak, start = peak_start
        return f"{peak / mib:.0f} (+{(peak - start) / mib:.0f})"

    rows = [
        ["fit", mem(fit1[1]), mem(fitc[1]), " / ".join(mem(p) for p in fitc[2])],
        ["score_samples", mem(score1[1]), mem(scorec[1]), " / ".join(mem(p) for p in scorec[2])],
    ]
    emit(["", "### Peak resident memory during the call, MiB (+ growth over the call's start), last round", ""])
    emit(table(["call", "one process", "cluster: client", "cluster: workers"], rows))
    rows = [
        ["fit", f"{fitc[3][0] / n / 1024:.0f}", f"{fitc[3][1] / n / 1024:.0f}",
         f"{(fitc[3][0] + fitc[3][1]) / mib:.0f}"],
        ["score_samples", f"{scorec[3][0] / n / 1024:.1f}", f"{scorec[3][1] / n / 1024:.1f}",
         f"{(scorec[3][0] + scorec[3][1]) / mib:.1f}"],
    ]
    emit(["", "### Bytes moved (cluster, last round; the client's scatter not included)", ""])
    emit(table(["call", "worker -> worker, KiB/image", "worker -> client, KiB/image", "total MiB"], rows))
    phases, busy = fitc[4]
    emit(["", f"### Where the cluster fit's {fitc[0]:.1f} s go (last round)", ""])
    emit(table(["phase", "s"], [[p, f"{s:.2f}"] for p, s in phases]))
    emit(["", "Worker time by task, summed over both workers (s):", ""])
    emit(table(["task", "action", "s"], [[k, a, f"{s:.2f}"] for (k, a), s in sorted(busy.items())]))

    emit(["", f"- load average (1, 5, 15 min) at the end: {load_average()}"])
    _projection(args)


def _projection(args):
    emit(["", "### Projection to 10 and 100 workers (on paper)", ""])
    probe = 16 if args.quick else 98
    costs = {}
    for name, d, backbone in (("resnet18 / 100", 100, "resnet18"), ("wide_resnet50_2 / 550", 550, "wide_resnet50_2")):
        merge, final = unit_costs(d, probe)
        size = 48 if args.quick else 224
        per_image = stream_cost(backbone, d, size, 2 if args.quick else 32)
        costs[name] = (3136, d, per_image, merge, final)
        emit([f"- {name}: stream {per_image * 1000:.0f} ms/image, merge {merge * 1e3:.3f} ms/position, "
              f"factorize + held-out distances {final * 1e3:.3f} ms/position (one thread, measured here"
              f"{', at 48 px: --quick' if args.quick else ''})"])
    emit([f"- {1_000_000} images, 2 partitions per worker, split_every=4, "
          f"{args.bandwidth / 1e9:.2f} GB/s between machines; 224 px (3136 positions)", ""])
    emit(table(["model", "workers", "partitions", "blocks", "tree depth", "stream s", "tree s",
                "factorize s", "client receives s", "total s", "moved GiB (bound)", "client receives GiB"],
               projection(costs, 1_000_000, args.bandwidth)))


if __name__ == "__main__":
    main()
