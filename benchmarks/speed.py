"""Throughput of PadimDetector.fit / score_samples against the bare backbone.

For each backbone, the same images (``make_anomaly_images``, uint8, computed
once) go through four variants, interleaved round by round so that
background load hits all of them alike (A, B, C, D, A, B, ...):

* ``backbone``: the detector's own torch module (its fitted
  ``backbone_``) run up to its last PaDiM layer (torchvision's
  ``create_feature_extractor`` on ``layers_``, which drops every layer after
  it), same batches and preprocessing (uint8 -> float / 255, ImageNet
  normalization), under ``torch.inference_mode()``, in float32 and torch's
  default (NCHW) memory format: the eager float32 forward pass, the
  baseline of every ratio. Same process, same allocator settings as the
  detector (glibc's defaults unless the process was started with tuned
  ones, see ``benchmarks/allocator.py``).
* ``backbone, channels_last``: the same extractor with its weights and
  inputs in the channels_last (NHWC) memory format, as the detector runs it
  on a CPU: the gain of that change alone.
* ``backbone, channels_last + folded batch norm``: the same, built from a
  copy of the model whose batch normalizations are folded into the
  convolutions before them (``skpadim._engine.fold``), as the detector runs
  it on a CPU: the gain of folding on top of channels_last.
* with ``--compile``, the folded channels_last extractor after
  ``torch.jit.trace`` + ``torch.jit.freeze`` (oneDNN's graph fusions) and
  after ``torch.compile`` (inductor, needs a C compiler): the time of the
  first call (tracing, compiling) is printed apart, with the number of images
  after which it pays for itself.
* ``backbone, channels_last + bfloat16`` (with ``--bf16``): the same under
  ``torch.autocast(dtype=torch.bfloat16)``, what ``backbone_dtype=
  "bfloat16"`` does.
* ``backbone, profiled``: the same under ``torch.profiler``; the
  difference with the previous row is the profiler's own cost on the same
  forward work.
* ``fit``: ``PadimDetector.fit``, under ``torch.profiler``.
* ``score_samples``: on the same images, under ``torch.profiler``.

The stages of ``fit`` and ``score_samples`` come from the
``torch.profiler.record_function`` ranges the detector marks them with
(``skpadim.decode``, ``.backbone``, ``.embedding``, ``.reservoir``,
``.update``, ``.precision``, ``.calibration``, ``.mahalanobis``, ``.maps``):
each stage is the sum of its ranges' wall time; the streaming loop of fit
runs from the start of the first ``decode`` to the end of the last
``update``; what no range covers (building the backbone, checking the input,
copies to numpy) is reported as "other". Nothing in the library is replaced
or subclassed. Medians over the rounds are reported; ratios are throughputs
divided by the bare backbone's. The
CPU columns come from ``getrusage(RUSAGE_SELF)`` (user + sys of all threads,
and minor page faults): on a machine shared with other jobs, wall time also
counts the time spent waiting for a core and CPU time mostly does not, so
the CPU-time ratio (backbone CPU s / variant CPU s) is the less noisy of
the two.

Usage::

    python benchmarks/speed.py --backbones resnet18          # ~1 min on 2 cores
    python benchmarks/speed.py --backbones resnet18 wide_resnet50_2 --n-wide 256
                                                             # ~8 min on 2 cores
    python benchmarks/speed.py --quick --json speed.json     # smoke test, < 1 minute
"""

import argparse
import copy
import gc
import os
import resource
import sys
import time

# The profiler's library logs an error where there is no GPU; its warnings stay.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402

from skpadim import PadimDetector  # noqa: E402
from skpadim._engine.fold import fold_batchnorm  # noqa: E402
from skpadim.datasets import make_anomaly_images  # noqa: E402

from _common import Report, environment, load_average, machine_header, median, spread  # noqa: E402

#: The goal: streaming fit and score_samples at 1.3x the eager float32 (NCHW) bare backbone.
TARGET = 1.3
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: The detector's record_function ranges, and those of fit's streaming loop.
RANGES = ("decode", "backbone", "embedding", "reservoir", "update", "precision", "calibration",
          "mahalanobis", "maps")
LOOP = ("decode", "backbone", "embedding", "reservoir", "update")


def _usage():
    """(CPU seconds user + sys, sys seconds, minor page faults) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt], dtype=float)


def _timed(fn):
    gc.collect()
    t0, u0 = time.perf_counter(), _usage()
    fn()
    return time.perf_counter() - t0, _usage() - u0


def profiled(fn):
    """Run ``fn`` under torch.profiler; its wall time, CPU usage and ``skpadim.*`` stages."""
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        total, usage = _timed(fn)
    stages = dict.fromkeys(RANGES, 0.0)
    calls = dict.fromkeys(RANGES, 0)
    loop_start, loop_end = np.inf, -np.inf
    for event in prof.events():
        if not event.name.startswith("skpadim."):
            continue
        name = event.name[len("skpadim."):]
        start, end = event.time_range.start, event.time_range.end  # microseconds
        stages[name] = stages.get(name, 0.0) + (end - start) / 1e6
        calls[name] = calls.get(name, 0) + 1
        if name in LOOP:
            loop_start, loop_end = min(loop_start, start), max(loop_end, end)
    loop = (loop_end - loop_start) / 1e6 if loop_end > loop_start else 0.0
    return {"total": total, "usage": usage, "stages": stages, "calls": calls, "loop": loop}


def bare_backbone(extractor, X, batch_size, memory_format=torch.contiguous_format, dtype=None):
    """The detector's preprocessing + forward pass up to the last PaDiM layer."""
    mean = torch.tensor(_IMAGENET[0]).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET[1]).view(1, 3, 1, 1)
    cast = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), cast:
        for start in range(0, len(X), batch_size):
            chunk = X[start : start + batch_size]
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(torch.float32).div_(255.0)
            x = x.movedim(-1, -3).contiguous()  # what the detector's resize does at the target size
            extractor(((x - mean) / std).contiguous(memory_format=memory_format))


def run_backbone(name, n_features, X, args, repeats):
    det = PadimDetector(backbone=name, weights=None, n_features=n_features, image_size=args.image_size,
                        batch_size=args.batch_size, device="cpu", random_state=0)
    # Warm-up (oneDNN primitives, allocator) on one batch, not measured.
    det.fit(X[: args.batch_size])
    det.score_samples(X[: args.batch_size])
    # The fitted backbone_ keeps only the modules up to its last layer; the
    # extractor is traced on the full torchvision model holding the same
    # weights (the layers after the last tapped one are pruned from the graph).
    full = torchvision.models.get_model(name, weights=None)
    full.load_state_dict(det.backbone_.state_dict(), strict=False)
    extractor = create_feature_extractor(full, return_nodes=list(det.layers_)).eval()
    nhwc = create_feature_extractor(copy.deepcopy(full), return_nodes=list(det.layers_)).eval()
    nhwc = nhwc.to(memory_format=torch.channels_last)
    folded = as_fit_runs_it(full, list(det.layers_))
    first = {}  # seconds of the first calls of the graph variants (tracing, compiling)
    bare = {
        "backbone": lambda: bare_backbone(extractor, X, args.batch_size),
        "backbone_cl": lambda: bare_backbone(nhwc, X, args.batch_size, torch.channels_last),
        "backbone_cl_fold": lambda: bare_backbone(folded, X, args.batch_size, torch.channels_last),
    }
    if args.compile:
        sample = torch.zeros(args.batch_size, 3, args.image_size, args.image_size).contiguous(
            memory_format=torch.channels_last)
        with torch.inference_mode():
            t0 = time.perf_counter()
            frozen = torch.jit.freeze(torch.jit.trace(folded, sample, strict=False).eval())
            bare_backbone(frozen, X[: args.batch_size], args.batch_size, torch.channels_last)
            bare_backbone(frozen, X[: args.batch_size], args.batch_size, torch.channels_last)
            first["backbone_jit"] = time.perf_counter() - t0
            compiled = torch.compile(folded)
            t0 = time.perf_counter()
            bare_backbone(compiled, X[: args.batch_size], args.batch_size, torch.channels_last)
            first["backbone_compile"] = time.perf_counter() - t0
        bare["backbone_jit"] = lambda: bare_backbone(frozen, X, args.batch_size, torch.channels_last)
        bare["backbone_compile"] = lambda: bare_backbone(compiled, X, args.batch_size, torch.channels_last)
    if args.bf16:
        bare["backbone_cl_bf16"] = lambda: bare_backbone(nhwc, X, args.batch_size, torch.channels_last,
                                                         torch.bfloat16)
    for fn in (extractor, nhwc, folded):
        bare_backbone(fn, X[: args.batch_size], args.batch_size)
    print(f"  [{name}] warm-up done; load {load_average()}", file=sys.stderr, flush=True)

    runs = {"backbone": [], "backbone_profiled": [], "fit": [], "score": [],
            **{k: [] for k in bare if k != "backbone"}, "first_calls": first}
    for r in range(repeats):
        for key, fn in bare.items():
            wall, usage = _timed(fn)
            runs[key].append({"total": wall, "usage": usage})
        runs["backbone_profiled"].append(profiled(lambda: bare_backbone(extractor, X, args.batch_size)))
        runs["fit"].append(profiled(lambda: det.fit(X)))
        runs["score"].append(profiled(lambda: det.score_samples(X)))
        print(f"  [{name}] round {r + 1}/{repeats}: backbone {runs['backbone'][-1]['total']:.2f}s, "
              f"fit {runs['fit'][-1]['total']:.2f}s "
              f"(loop {runs['fit'][-1]['loop']:.2f}s), score {runs['score'][-1]['total']:.2f}s; "
              f"load {load_average()}", file=sys.stderr, flush=True)
    return runs


def as_fit_runs_it(model, layers):
    """An extractor of ``layers`` built as the detector runs the backbone on a CPU: a copy
    with its batch normalizations folded, in the channels_last memory format."""
    folded = create_feature_extractor(fold_batchnorm(model, keep=layers)[0], return_nodes=layers)
    return folded.eval().to(memory_format=torch.channels_last)


def batch_sweep(report, name, n_features, X, args):
    """For each of ``args.batch_sweep`` batch sizes, interleaved round by round: the
    backbone as the detector runs it on a CPU (channels_last, folded batch norm), and
    ``PadimDetector(batch_size=B)``'s fit and score_samples on the same images."""
    ext = as_fit_runs_it(torchvision.models.get_model(name, weights=None), ["layer1", "layer2", "layer3"])
    sizes = args.batch_sweep
    dets = {b: PadimDetector(backbone=name, weights=None, n_features=n_features, image_size=args.image_size,
                             batch_size=b, device="cpu", random_state=0) for b in sizes}
    for b in sizes:
        bare_backbone(ext, X[:b], b, torch.channels_last)
        dets[b].fit(X[: 2 * b]).score_samples(X[:b])
    runs = {b: {"backbone": [], "fit": [], "score": []} for b in sizes}
    for _ in range(args.repeats or 3):
        for b in sizes:
            runs[b]["backbone"].append(_timed(lambda: bare_backbone(ext, X, b, torch.channels_last, None)))
            runs[b]["fit"].append(_timed(lambda: dets[b].fit(X)))
            runs[b]["score"].append(_timed(lambda: dets[b].score_samples(X)))
    ref = 32 if 32 in runs else sizes[0]
    med = lambda b, k: median([w for w, _ in runs[b][k]])  # noqa: E731
    rows = []
    for b in sizes:
        rows.append([str(b)] + [f"{len(X) / med(b, k):.2f} ({med(ref, k) / med(b, k):.2f})"
                                for k in ("backbone", "fit", "score")])
    report.text(["", f"### {name}: batch size, {len(X)} images, {args.image_size} px, "
                 f"{args.repeats or 3} rounds (images/s, and in brackets the ratio to batch {ref})", ""])
    report.table(f"{name}/batch sizes", ["batch", "backbone (channels_last + folded batch norm)",
                                         "fit, end to end", "score_samples"], rows)


def _med(runs, key, stage=None):
    return median([r["stages"].get(stage, 0.0) if stage else r[key] for r in runs])


def _raw(runs):
    """The rounds of one variant, JSON-able."""
    return [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in runs]


def report_backbone(report, name, n_features, N, runs, args):
    fits, scores = runs["fit"], runs["score"]
    bare = _med(runs["backbone"], "total")
    profiled_bare = _med(runs["backbone_profiled"], "total")
    fit_total, fit_loop, score_total = _med(fits, "total"), _med(fits, "loop"), _med(scores, "total")
    fixed = median([f["total"] - f["loop"] for f in fits])
    ips = lambda s: N / s  # noqa: E731
    b = ips(bare)

    def usage(variant):
        """Median (CPU s, sys s, minor faults) of a variant's rounds."""
        return np.median(np.stack([r["usage"] for r in variant]), axis=0)

    b_cpu = usage(runs["backbone"])[0]

    def row(label, secs, seconds_list, use=None):
        tput = ips(secs)
        cols = ["-"] * 3 if use is None else [
            f"{use[0]:.1f} ({use[1]:.1f})", f"{use[2] / N:,.0f}", f"{b_cpu / use[0]:.2f}"]
        return [label, f"{secs:.2f}", spread(seconds_list), f"{tput:.2f}",
                f"{tput / b:.2f}"] + cols

    report.text(["", f"### {name}, n_features={n_features}, N={N} images, {args.image_size} px, "
                 f"batch {args.batch_size}, {len(fits)} rounds", ""])
    report.table(f"{name}/variants",
                 ["variant", "median s", "min-max s", "images/s", "ratio vs backbone",
                  "CPU s (of which sys)", "page faults / image", "CPU-time ratio"],
                 [row(label, _med(v, "total"), [x["total"] for x in v], usage(v)) for label, v in (
                     ("backbone (float32, NCHW: the baseline)", runs["backbone"]),
                     ("backbone, profiled", runs["backbone_profiled"]),
                     *((label, runs[key]) for key, label in (
                         ("backbone_cl", "backbone, channels_last"),
                         ("backbone_cl_fold", "backbone, channels_last + folded batch norm (as fit runs it)"),
                         ("backbone_jit", "backbone, as fit runs it + torch.jit.freeze"),
                         ("backbone_compile", "backbone, as fit runs it + torch.compile"),
                         ("backbone_cl_bf16", "backbone, channels_last + bfloat16 autocast")) if key in runs),
                     ("fit, end to end", fits))]
                 + [row("fit, streaming loop only", fit_loop, [f["loop"] for f in fits]),
                    row("score_samples", score_total, [s["total"] for s in scores], usage(scores))])
    lines = []
    for key, label in (("backbone_jit", "torch.jit.trace + freeze"), ("backbone_compile", "torch.compile")):
        if key in runs:
            t_first = runs["first_calls"][key]
            saved = _med(runs["backbone_cl_fold"], "total") / N - _med(runs[key], "total") / N
            pays = f"pays for itself after {t_first / saved:,.0f} images" if saved > 0 else "never pays"
            lines.append(f"{label}: first call(s) {t_first:.1f} s; against the folded channels_last "
                         f"forward pass it {pays}.")
    lines = ["", *lines, "Profiler overhead on the "
             f"backbone's forward work: {100 * (profiled_bare / bare - 1):+.1f}%. Fixed cost of fit "
             f"(everything but the streaming loop), measured: {fixed:.1f} s (range "
             f"{spread([f['total'] - f['loop'] for f in fits])}), independent of N."]
    stream_rate = ips(fit_loop)
    if stream_rate > TARGET * b:
        n_even = fixed / (1.0 / (TARGET * b) - 1.0 / stream_rate)
        lines.append(f"End-to-end fit reaches {TARGET:.2f}x the backbone's throughput from about "
                     f"N = {n_even:,.0f} images (fixed cost amortized).")
    else:
        lines.append(f"The streaming loop alone is below {TARGET:.2f}x the backbone, so end-to-end fit "
                     "cannot reach the target at any N.")
    report.text(lines + ["", "fit stages (median seconds, from the skpadim.* profiler ranges):", ""])

    def row_of(label, secs, total, note=""):
        return [label, f"{secs:.2f}", f"{100 * secs / total:.0f}%", note]

    def stage(label, runs_, name, total, note=""):
        return row_of(label, median([r["stages"][name] for r in runs_]), total, note)

    loop_other = median([f["loop"] - sum(f["stages"][k] for k in LOOP) for f in fits])
    rest = median([f["total"] - f["loop"] - f["stages"]["precision"] - f["stages"]["calibration"] for f in fits])
    report.table(f"{name}/fit stages", ["stage", "s", "% of fit", "note"], [
        stage("loop: decode (input to float, resize)", fits, "decode", fit_total),
        stage("loop: backbone forward (normalize + forward)", fits, "backbone", fit_total),
        stage("loop: embedding (select + upsample)", fits, "embedding", fit_total),
        stage("loop: reservoir (copy of calibration images' kept channels)", fits, "reservoir", fit_total,
              "first 64 images always copied, later ones with probability 64/t"),
        stage("loop: stats update (buffered GEMMs)", fits, "update", fit_total,
              f"{fits[0]['calls']['update']} ranges"),
        row_of("loop: other (between the ranges)", loop_other, fit_total),
        stage("end: mean + precision (Cholesky, inverse)", fits, "precision", fit_total),
        stage("end: calibration (held-out Cholesky + maps)", fits, "calibration", fit_total),
        row_of("other: build backbone, probe shapes, checks, to numpy, offset", rest, fit_total),
        row_of("total (measured)", fit_total, fit_total),
    ])

    report.text(["", "score_samples stages (median seconds, from the skpadim.* profiler ranges):", ""])
    score_stages = ("decode", "backbone", "embedding", "mahalanobis", "maps")
    other = median([s["total"] - sum(s["stages"][k] for k in score_stages) for s in scores])
    report.table(f"{name}/score_samples stages", ["stage", "s", "% of score_samples"], [
        stage("decode (input to float, resize)", scores, "decode", score_total)[:3],
        stage("backbone forward (normalize + forward)", scores, "backbone", score_total)[:3],
        stage("embedding (select + upsample)", scores, "embedding", score_total)[:3],
        stage("Mahalanobis (bmm with precision)", scores, "mahalanobis", score_total)[:3],
        stage("maps (bilinear upsample + Gaussian smoothing)", scores, "maps", score_total)[:3],
        row_of("other (checks, max, to numpy)", other, score_total)[:3],
        row_of("total", score_total, score_total)[:3],
    ])

    verdict = {"fit streaming loop": stream_rate / b, f"fit end to end (N={N})": ips(fit_total) / b,
               "score_samples": ips(score_total) / b}
    paired_loop = median([p["total"] / f["loop"] for p, f in zip(runs["backbone"], fits)])
    paired_score = median([p["total"] / s["total"] for p, s in zip(runs["backbone"], scores)])
    share_loop = median([f["stages"]["backbone"] / f["loop"] for f in fits])
    share_score = median([s["stages"]["backbone"] / s["total"] for s in scores])
    report.text(["", f"Target >= {TARGET:.2f} x backbone: "
                 + "; ".join(f"{k} {v:.2f} {'MET' if v >= TARGET else 'NOT MET'}" for k, v in verdict.items()),
                 f"Median of per-round ratios: fit streaming loop {paired_loop:.2f}, score_samples "
                 f"{paired_score:.2f}. Backbone share of the time inside the call (the ratio if the "
                 f"detector's backbone ran exactly as fast as the bare one): fit streaming loop "
                 f"{share_loop:.2f}, score_samples {share_score:.2f}."])
    report.record(name, {"n_features": n_features, "n_images": N, "image_size": args.image_size,
                         "batch_size": args.batch_size, "ratios": verdict,
                         "first_calls": runs["first_calls"],
                         "rounds": {k: _raw(v) for k, v in runs.items() if k != "first_calls"}})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: resnet18 at 64 px, 16 images, 1 round")
    p.add_argument("--backbones", nargs="+", default=["resnet18", "wide_resnet50_2"],
                   choices=["resnet18", "wide_resnet50_2"])
    p.add_argument("--n-resnet18", type=int, default=256, help="training images for resnet18")
    p.add_argument("--n-wide", type=int, default=64, help="training images for wide_resnet50_2")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved rounds per backbone (default: 3 for resnet18, 2 for wide_resnet50_2)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--bf16", action="store_true",
                   help="also time the bare backbone under bfloat16 autocast (slow on CPUs without AVX512-BF16/AMX)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.jit.freeze and torch.compile (inductor) on the folded extractor")
    p.add_argument("--batch-sweep", type=int, nargs="+", default=None, metavar="B",
                   help="only time the backbone as the detector runs it, fit and score_samples at "
                        "these batch sizes")
    p.add_argument("--json", help="also write the environment, the tables and every round to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.image_size, args.batch_size, args.repeats = 64, 8, 1
        plan = [("resnet18", 100, 16)]
    else:
        sizes = {"resnet18": (100, args.n_resnet18), "wide_resnet50_2": (550, args.n_wide)}
        plan = [(name, *sizes[name]) for name in dict.fromkeys(args.backbones)]

    t_start = time.perf_counter()
    n_max = max(n for _, _, n in plan)
    X, _, _ = make_anomaly_images(n_max, 0, image_size=args.image_size, random_state=0)
    report = Report(environment())
    report.text(["## speed", ""])
    report.text(machine_header(report.env, [
        f"images: make_anomaly_images({n_max}, 0, image_size={args.image_size}, random_state=0), uint8, "
        "precomputed; weights=None (random), random_state=0, device='cpu'",
        "variants interleaved per round (backbone, backbone channels_last, + folded batch norm[, "
        "+ bfloat16], "
        "backbone profiled, fit, score_samples); medians reported",
    ]))
    for name, n_features, N in plan:
        if args.batch_sweep:
            batch_sweep(report, name, n_features, X[:N], args)
            continue
        runs = run_backbone(name, n_features, X[:N], args, args.repeats or (3 if name == "resnet18" else 2))
        report_backbone(report, name, n_features, N, runs, args)
        gc.collect()
    report.finish(t_start, args.json)


if __name__ == "__main__":
    main()
