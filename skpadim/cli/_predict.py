"""``skpadim predict``: score images, flag the anomalous ones, one CSV row per image.

An image that cannot be read gets its row too (label ``error``, the reason
in the ``error`` column) and a line on stderr; the run goes on and ends
with exit status 3. ``--csv FILE`` is complete or absent: rows go to a
temporary file renamed at the end; after an error or an interrupt the rows
already written are kept in ``FILE.partial``.
"""

import os
import sys

from ._args import NATIVE, add_command, add_run_options, finite
from ._common import (
    EXIT_OK, EXIT_SKIPPED, CLIError, check_output_file, note, progress, report_unreadable,
)

NAME = "predict"
HELP = "score images and flag the anomalous ones"
EPILOG = """\
Example:
  skpadim predict model.skpadim data/new > predictions.csv
  skpadim predict model.skpadim part1.png part2.png --threshold 14.5 --out overlays

Writes a CSV with the columns path, score, label (+ overlay with --out),
error to stdout, or to --csv FILE. score is the anomaly score (the maximum of
the anomaly map; higher = more anomalous); label is "anomalous" when the
score is above the threshold, else "normal". An image that cannot be read
has label "error", an empty score and the reason in the error column; it is
named on stderr too, and the run ends with exit status 3 (1 if no image
could be read; --strict stops at the first one). With --out DIR, one PNG per
image: the image, its heat map, and the flagged region (map above the
threshold) outlined in red, at DIR/<folder name>/<path inside the
folder>.png for an image found in a folder, DIR/<file name>.png for an
image given as a file.

--csv FILE is written under a temporary name and renamed when the run
ends: FILE is complete, or not written. After an error or an interrupt
(Ctrl-C, SIGTERM) the rows of the images already scored are in
FILE.partial.

With --scheduler ADDRESS, the images are scored on the workers of that
Dask cluster (which must see the same paths, and the --out folder); only
the CSV rows come back (docs/distributed.md)."""


def add_parser(subparsers):
    p = add_command(subparsers, NAME, HELP, EPILOG, run)
    p.add_argument("model", metavar="MODEL",
                   help="model file written by skpadim fit, or an export (.onnx file or OpenVINO "
                        "folder, which runs without torch)")
    p.add_argument("images", metavar="IMAGES", nargs="+",
                   help="image files or folders (searched recursively)")
    p.add_argument("--threshold", type=finite, default=None, metavar="T",
                   help="flag images whose score is above this (default: the model's threshold, "
                        "see skpadim info)")
    p.add_argument("--out", default=None, metavar="DIR", help="write one overlay PNG per image into DIR")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the CSV to FILE instead of stdout")
    add_run_options(p, scheduler=True)
    return p


def threshold(args, detector):
    """``(threshold, where it comes from)``: --threshold, or the model's."""
    from ._describe import threshold_of

    if args.threshold is not None:
        return float(args.threshold), "--threshold"
    return threshold_of(detector), "the model's"


def prepare(detector, args):
    """The loaded model, as the command runs it: no bar of its own, --batch-size.

    A PadimDetector or an exported model (which has no ``set_params``, and
    no bar).
    """
    from ._model import is_export

    if is_export(detector):
        if args.batch_size is not None:
            detector.batch_size = args.batch_size
        return
    detector.set_params(verbose=False)
    if args.batch_size is not None:
        detector.set_params(batch_size=args.batch_size)


def _check_out_dir(out):
    from ._report import require_matplotlib

    require_matplotlib("--out (overlay pictures)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out '{out}' is a file; pass a folder for the overlay pictures.")


def _overlay(target, image_map, path, label, score, t):
    from ._output import write_bytes
    from ._report import overlay_png

    target.parent.mkdir(parents=True, exist_ok=True)
    title = f"{label}: score {score:.4g} (threshold {t:.4g})"
    write_bytes(target, overlay_png(path, image_map, t, title=title))


def _overlay_of(targets, t, r):
    """Write the overlay of the scored ImageResult ``r`` (on a worker, with --scheduler)."""
    _overlay(targets[r.index], r.map, r.path, "anomalous" if r.score > t else "normal", r.score, t)


def run(args):
    if args.scheduler is None:
        return _run(args)
    from .._model_kind import EXPORTED, model_kind
    from ._cluster import cluster

    if model_kind(args.model) in EXPORTED:
        raise CLIError(f"--scheduler runs models of skpadim fit; '{args.model}' is an export, which "
                       "runs on this machine: leave --scheduler out.")

    with cluster(args.scheduler) as client:
        return _run(args, client)


def _results(detector, items, args, t, targets, client):
    """ImageResults in input order: scored here, or on the cluster (overlays written there)."""
    if client is None:
        from .._batch import score_images

        return score_images(detector, items, with_maps=bool(targets), strict=args.strict,
                            native=NATIVE)
    import functools

    from ..distributed import score_files

    on_result = functools.partial(_overlay_of, targets, t) if targets else None
    return score_files(detector, items, client=client, on_result=on_result, strict=args.strict)


def _run(args, client=None):
    from ._files import collect_images, overlay_names
    from ._model import load_model
    from ._output import CSVOutput

    named = collect_images(args.images)  # before loading: fail fast on a typo
    if args.csv is not None:
        check_output_file(args.csv, "--csv")
    if args.out is not None:
        _check_out_dir(args.out)
    detector = load_model(args.model)
    prepare(detector, args)
    t, _ = threshold(args, detector)
    items = [item for item, _ in named]
    targets = overlay_names([n for _, n in named], args.out) if args.out else None
    header = ["path", "score", "label"] + (["overlay"] if targets else []) + ["error"]
    output = CSVOutput(args.csv, header)
    n_flagged, failed = 0, 0
    try:
        with progress(len(items), NAME, not args.quiet) as bar:
            for r in _results(detector, items, args, t, targets, client):
                if r.error is not None:
                    failed += 1
                    report_unreadable(r.path, r.error, bar)
                    row = [r.path, "", "error"] + ([""] if targets else []) + [r.error]
                else:
                    label = "anomalous" if r.score > t else "normal"
                    n_flagged += label == "anomalous"
                    row = [r.path, f"{r.score:.6g}", label]
                    if targets:
                        if client is None:  # else written by the worker that scored it
                            _overlay(targets[r.index], r.map, r.path, label, r.score, t)
                        row.append(str(targets[r.index]))
                    row.append("")
                output.write(row)
                bar.update(1)
    except BaseException as exc:
        _stopped(output, len(items), exc)
        raise
    output.commit()
    return _summary(args, len(items), failed, n_flagged, t, targets)


def _stopped(output, total, exc):
    """After an error or an interrupt: keep the complete rows, say where."""
    from ..exceptions import UnreadableImageError

    partial = output.abort()
    if isinstance(exc, BrokenPipeError):  # e.g. skpadim predict ... | head: the reader left
        return
    if output.path is None:
        note(f"skpadim: stopped after {output.rows} of {total} images; the CSV on stdout is "
             "incomplete.")
    elif partial is not None:
        note(f"skpadim: stopped after {output.rows} of {total} images; their rows are in "
             f"{partial} ({output.path} was not written).")
    if isinstance(exc, UnreadableImageError):  # --strict
        raise CLIError(f"{exc}; --strict stops at the first unreadable image (without it, "
                       "such images get a row with label 'error' and the run goes on).") from None


def _summary(args, total, failed, n_flagged, t, targets):
    n_scored = total - failed
    where = f" CSV: {args.csv}." if args.csv else ""
    pics = f" Overlays: {args.out}{os.sep}." if targets else ""
    if failed:
        note(f"{failed} of {total} images could not be scored (label 'error' in the CSV, reasons "
             "in its error column).")
    if n_scored == 0:
        raise CLIError(f"None of the {total} images could be scored; each is named above.{where}")
    note(f"{n_flagged} of {n_scored} images flagged as anomalous (score > {t:.6g}).{where}{pics}")
    sys.stderr.flush()
    return EXIT_SKIPPED if failed else EXIT_OK
