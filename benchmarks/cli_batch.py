"""What the command line's per-image error handling costs.

Two questions, on the same image files:

* ``skpadim fit`` decodes every file once before fitting (to find bad files
  before the first forward pass): how long is that check next to the fit?
* ``skpadim predict`` decodes the files itself and scores them as arrays
  (one bad file costs only its own row), several batches per call of the
  detector: how fast is that next to ``PadimDetector.score_samples(paths)``,
  where the detector decodes, and next to one call per batch?

Variants run interleaved, ``--repeats`` times, in an order rotated every
round; the table gives medians of wall time, its min-max spread and the
medians of CPU time (all threads of the process: less sensitive than wall
time to other processes on a shared machine), then the ratios. ResNet-18 with random weights (the
speed does not depend on the weights).

Usage:
  python benchmarks/cli_batch.py --data /path/to/magnetic-tile/MT_Free/Imgs --n 64 --threads 1
  python benchmarks/cli_batch.py            # generated 256 px PNG files
  python benchmarks/cli_batch.py --quick    # a few small images, checks the script runs
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import environment, machine_header, median, spread, table


def _files(args, tmp):
    if args.data:
        exts = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
        found = sorted(str(p) for p in Path(args.data).rglob("*") if p.suffix.lower() in exts)
        if len(found) < args.n:
            raise SystemExit(f"{args.data} holds {len(found)} images, fewer than --n {args.n}")
        return found[: args.n], f"{args.n} files from {args.data}"
    from PIL import Image

    from skpadim.datasets import make_anomaly_images

    X, _, _ = make_anomaly_images(args.n, 0, image_size=args.file_size, random_state=0)
    paths = []
    for i, x in enumerate(X):
        paths.append(os.path.join(tmp, f"{i:04d}.png"))
        Image.fromarray(x).save(paths[-1])
    return paths, f"{args.n} generated {args.file_size} px PNG files"


def _timed(fn):
    """(wall seconds, CPU seconds of the process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder of image files (default: generated)")
    parser.add_argument("--n", type=int, default=96, help="number of images (default: 96)")
    parser.add_argument("--file-size", type=int, default=256, help="side of generated files (default: 256)")
    parser.add_argument("--image-size", type=int, default=224, help="the model's image_size (default: 224)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 is the least noisy on a shared machine")
    parser.add_argument("--quick", action="store_true", help="8 images of 64 px, once")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.file_size, args.image_size, args.repeats, args.batch_size = 8, 64, 64, 1, 4

    from skpadim import PadimDetector
    from skpadim._batch import check_files, score_images

    with tempfile.TemporaryDirectory() as tmp:
        paths, source = _files(args, tmp)
        det = PadimDetector(weights=None, image_size=args.image_size, batch_size=args.batch_size,
                            random_state=0)
        one = args.batch_size
        variants = {
            "check": lambda: check_files(paths),
            "fit": lambda: det.fit(paths),
            "score_samples(paths)": lambda: det.score_samples(paths),
            "score_images(paths)": lambda: list(score_images(det, paths)),
            "score_images, 1 batch per call": lambda: list(score_images(det, paths, chunk_size=one)),
        }
        times = {k: [] for k in variants}
        cpu = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.repeats):  # interleaved, the order rotated every round
            for name in names[r % len(names):] + names[: r % len(names)]:
                wall, used = _timed(variants[name])
                times[name].append(wall)
                cpu[name].append(used)
    n = len(paths)
    rows = [(k, f"{median(v):.2f}", spread(v), f"{1000 * median(v) / n:.1f}", f"{median(cpu[k]):.2f}")
            for k, v in times.items()]
    print("\n".join(machine_header(environment(), [
        f"{source}; model image_size {args.image_size}, batch_size {args.batch_size}, "
        f"resnet18 random weights; {args.repeats} interleaved repeats",
    ])))
    print()
    print("\n".join(table(["step", "median s", "spread s", "ms per image", "CPU s"], rows)))
    print()
    for label, t in (("wall", times), ("CPU", cpu)):
        theirs = median(t["score_samples(paths)"])
        print(f"{label:>4}: check / fit {median(t['check']) / median(t['fit']):.3f}    "
              f"score_images / score_samples {median(t['score_images(paths)']) / theirs:.3f}    "
              f"(1 batch per call: {median(t['score_images, 1 batch per call']) / theirs:.3f})")


if __name__ == "__main__":
    main()
