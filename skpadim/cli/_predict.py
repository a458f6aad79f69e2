"""``skpadim predict``: score images, flag the anomalous ones, localize their defects.

One CSV row per image: its score, its label and its defect regions (how
many, the largest one's area and box). An image that cannot be read gets
its row too (label ``error``, the reason in the ``error`` column) and a
line on stderr; the run goes on and ends with exit status 3. ``--csv FILE``
and ``--regions FILE`` are complete or absent: lines go to a temporary file
renamed at the end; after an error or an interrupt the lines already
written are kept in ``FILE.partial``. Mask files and overlay pictures are
each complete or absent.
"""

import os
import sys

from ._args import NATIVE, add_command, add_localization_options, add_run_options, finite
from ._common import (
    EXIT_OK, EXIT_SKIPPED, CLIError, check_output_file, note, progress, report_unreadable,
)

NAME = "predict"
HELP = "score images, flag the anomalous ones and localize their defects"
EPILOG = """\
Example:
  skpadim predict model.skpadim data/new > predictions.csv
  skpadim predict model.skpadim part1.png part2.png --threshold 14.5 --out overlays
  skpadim predict model.skpadim data/new --csv p.csv --masks masks --regions regions.jsonl

Writes a CSV with the columns path, score, label, n_regions, largest_area,
largest_box (+ overlay with --out, mask with --masks), error to stdout, or
to --csv FILE. score is the anomaly score (the maximum of the anomaly map;
higher = more anomalous); label is "anomalous" when the score is above the
threshold, else "normal". An anomalous image has one defect region or more
(the connected parts of its defect mask); n_regions counts them,
largest_area is the largest one's area in pixels and largest_box its box,
"x0 y0 x1 y1" in the image's pixels (end excluded); a normal image has 0, 0
and an empty box. An image that cannot be read has label "error", empty
score and region columns and the reason in the error column; it is named
on stderr too, and the run ends with exit status 3 (1 if no image could be
read; --strict stops at the first one).

With --masks DIR, one PNG mask per image at the image's size (white =
defect; all black for a normal image); with --out DIR, one overlay PNG per
image: the image, its heat map and its defect regions outlined in red.
Both are named DIR/<folder name>/<path inside the folder>.png for an image
found in a folder, DIR/<file name>.png for an image given as a file. With
--regions FILE, one JSON object per line and per image: path, index,
score, label, regions (each with box, area, centroid, peak, mean), error.

--csv FILE and --regions FILE are written under a temporary name and
renamed when the run ends: each is complete, or not written. After an
error or an interrupt (Ctrl-C, SIGTERM) the lines of the images already
scored are in FILE.partial.

With --scheduler ADDRESS, the images are scored on the workers of that
Dask cluster (which must see the same paths, and the --out and --masks
folders: the workers write the pictures and masks); only the CSV rows and
the regions come back (docs/distributed.md)."""


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
    add_localization_options(p)
    p.add_argument("--out", default=None, metavar="DIR", help="write one overlay PNG per image into DIR")
    p.add_argument("--masks", default=None, metavar="DIR",
                   help="write one defect mask PNG per image into DIR (white = defect)")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the CSV to FILE instead of stdout")
    p.add_argument("--regions", default=None, metavar="FILE",
                   help="write every image's defect regions to FILE, as JSON lines")
    add_run_options(p, scheduler=True)
    return p


def threshold(args, detector):
    """``(threshold, where it comes from)``: --threshold, or the model's."""
    from ._describe import threshold_of

    if args.threshold is not None:
        return float(args.threshold), "--threshold"
    return threshold_of(detector), "the model's"


def pixel_threshold(args, detector):
    """``(pixel threshold, where it comes from)``: --pixel-threshold, or the model's."""
    source = "--pixel-threshold" if args.pixel_threshold is not None else "the model's"
    return float(detector.pixel_threshold_), source


def prepare(detector, args):
    """The loaded model, as the command runs it: no bar of its own, --batch-size, and the
    thresholds of the command line.

    A PadimDetector or an exported model (which has no ``set_params``, and
    no bar). --threshold becomes the model's ``offset_`` (its masks and
    regions follow the labels: an image has regions when it is flagged),
    --pixel-threshold its ``pixel_threshold_``, --min-region-area its
    ``min_region_area``.
    """
    from ._model import is_export

    exported = is_export(detector)
    if not exported:
        detector.set_params(verbose=False)
    if args.batch_size is not None:
        if exported:
            detector.batch_size = args.batch_size
        else:
            detector.set_params(batch_size=args.batch_size)
    if args.threshold is not None:
        detector.offset_ = -float(args.threshold)
    if args.pixel_threshold is not None:
        detector.pixel_threshold_ = float(args.pixel_threshold)
    if args.min_region_area is not None:
        if exported:
            detector.min_region_area = args.min_region_area
        else:
            detector.set_params(min_region_area=args.min_region_area)


def _check_out_dir(out, option, what):
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"{option} '{out}' is a file; pass a folder for {what}.")


def _check_outputs(args):
    """The files and folders of the run can be written, and are distinct."""
    from ._report import require_matplotlib

    if args.csv is not None:
        check_output_file(args.csv, "--csv")
    if args.regions is not None:
        check_output_file(args.regions, "--regions")
        if args.csv is not None and os.path.abspath(args.csv) == os.path.abspath(args.regions):
            raise CLIError(f"--csv and --regions both name '{args.csv}'; pass two files.")
    if args.out is not None:
        require_matplotlib("--out (overlay pictures)")
        _check_out_dir(args.out, "--out", "the overlay pictures")
    if args.masks is not None:
        _check_out_dir(args.masks, "--masks", "the mask files")
        if args.out is not None and os.path.abspath(args.out) == os.path.abspath(args.masks):
            raise CLIError(f"--out and --masks both name '{args.out}': an overlay and a mask would "
                           "have the same file name; pass two folders.")


def _overlay(target, r, label, t):
    from ._output import write_bytes
    from ._report import overlay_png

    target.parent.mkdir(parents=True, exist_ok=True)
    n = len(r.regions)
    found = f"{n} defect region{'s' if n > 1 else ''}, outlined in red" if n else "no defect region"
    title = f"{label}: score {r.score:.4g} (threshold {t:.4g}); {found}"
    write_bytes(target, overlay_png(r.path, r.map, t, predicted=r.mask, title=title))


def _pictures(overlays, masks, t, r):
    """Write the mask file and the overlay of the scored ImageResult ``r``, each complete or
    absent (on a worker, with --scheduler)."""
    from .._regions import save_mask

    if masks is not None:
        masks[r.index].parent.mkdir(parents=True, exist_ok=True)
        save_mask(masks[r.index], r.mask)
    if overlays is not None:
        _overlay(overlays[r.index], r, "anomalous" if r.score > t else "normal", t)


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


def _results(detector, items, args, overlays, masks, t, client):
    """ImageResults in input order, with their regions (and maps and masks for the pictures):
    scored here, or on the cluster (pictures written there)."""
    pictures = overlays is not None or masks is not None
    if client is None:
        from .._batch import score_images

        return score_images(detector, items, with_maps=overlays is not None, with_regions=True,
                            with_masks=pictures, strict=args.strict, native=NATIVE)
    import functools

    from ..distributed import score_files

    on_result = functools.partial(_pictures, overlays, masks, t) if pictures else None
    return score_files(detector, items, client=client, with_regions=True, with_masks=pictures,
                       on_result=on_result, strict=args.strict)


def region_cells(regions):
    """The CSV cells ``n_regions``, ``largest_area``, ``largest_box`` of an image's regions
    (``"0", "0", ""`` for an image without region; the box as ``"x0 y0 x1 y1"``)."""
    from .._regions import summary

    found = summary(regions)
    box = found["largest_box"]
    box = "" if box is None else " ".join(map(str, box))
    return [str(found["n_regions"]), str(found["largest_area"]), box]


class _Outputs:
    """The CSV and, with --regions, the JSON lines of a run: one line each per image."""

    def __init__(self, args, overlays, masks):
        from ._output import CSVOutput, JSONLinesOutput

        self.overlays, self.masks = overlays, masks
        header = (["path", "score", "label", "n_regions", "largest_area", "largest_box"]
                  + (["overlay"] if overlays else []) + (["mask"] if masks else []) + ["error"])
        self.csv = CSVOutput(args.csv, header)
        self.files = [self.csv]
        self.jsonl = None
        if args.regions is not None:
            try:
                self.jsonl = JSONLinesOutput(args.regions)
            except BaseException:
                self.csv.abort()
                raise
            self.files.append(self.jsonl)

    def _names(self, r, blank):
        named = [(key, paths) for key, paths in (("overlay", self.overlays), ("mask", self.masks)) if paths]
        return {key: None if blank else str(paths[r.index]) for key, paths in named}

    def write(self, r, label):
        """The CSV row and the JSON line of the ImageResult ``r`` (label: normal, anomalous, error)."""
        failed = r.error is not None
        names = self._names(r, failed)
        if failed:
            row = [r.path, "", "error", "", "", ""]
        else:
            row = [r.path, f"{r.score:.6g}", label] + region_cells(r.regions)
        self.csv.write(row + [v or "" for v in names.values()] + [r.error or ""])
        if self.jsonl is not None:
            regions = None if failed else [g.to_dict() for g in r.regions]
            self.jsonl.write({"path": r.path, "index": r.index, "score": r.score, "label": label,
                              "regions": regions, **names, "error": r.error})

    def commit(self):
        for i, f in enumerate(self.files):
            try:
                f.commit()
            except BaseException:
                for later in self.files[i + 1:]:
                    later.abort()
                raise

    def abort(self):
        """``[(output, its partial file or None)]`` after an error or an interrupt."""
        return [(f, f.abort()) for f in self.files]


def _run(args, client=None):
    from ._files import collect_images, overlay_names
    from ._model import load_model

    named = collect_images(args.images)  # before loading: fail fast on a typo
    _check_outputs(args)
    detector = load_model(args.model)
    prepare(detector, args)
    t, _ = threshold(args, detector)
    items = [item for item, _ in named]
    names = [n for _, n in named]
    overlays = overlay_names(names, args.out) if args.out else None
    masks = overlay_names(names, args.masks) if args.masks else None
    outputs = _Outputs(args, overlays, masks)
    n_flagged = n_regions = failed = 0
    try:
        with progress(len(items), NAME, not args.quiet) as bar:
            for r in _results(detector, items, args, overlays, masks, t, client):
                if r.error is not None:
                    failed += 1
                    report_unreadable(r.path, r.error, bar)
                    label = "error"
                else:
                    label = "anomalous" if r.score > t else "normal"
                    n_flagged += label == "anomalous"
                    n_regions += len(r.regions)
                    if client is None:  # else written by the worker that scored it
                        _pictures(overlays, masks, t, r)
                outputs.write(r, label)
                bar.update(1)
    except BaseException as exc:
        _stopped(outputs, len(items), exc)
        raise
    outputs.commit()
    return _summary(args, len(items), failed, n_flagged, n_regions, t)


def _stopped(outputs, total, exc):
    """After an error or an interrupt: keep the complete lines, say where."""
    from ..exceptions import UnreadableImageError

    stopped = outputs.abort()
    if isinstance(exc, BrokenPipeError):  # e.g. skpadim predict ... | head: the reader left
        return
    done = outputs.csv.rows
    if outputs.csv.path is None:
        note(f"skpadim: stopped after {done} of {total} images; the CSV on stdout is incomplete.")
    kept = [f"{'rows' if f is outputs.csv else 'regions'} are in {partial} ({f.path} was not written)"
            for f, partial in stopped if partial is not None]
    if kept:
        note(f"skpadim: stopped after {done} of {total} images; their {' and their '.join(kept)}.")
    if isinstance(exc, UnreadableImageError):  # --strict
        raise CLIError(f"{exc}; --strict stops at the first unreadable image (without it, "
                       "such images get a row with label 'error' and the run goes on).") from None


def _summary(args, total, failed, n_flagged, n_regions, t):
    n_scored = total - failed
    where = "".join(f" {what}: {path}{end}." for what, path, end in (
        ("CSV", args.csv, ""), ("Regions", args.regions, ""), ("Masks", args.masks, os.sep),
        ("Overlays", args.out, os.sep)) if path)
    if failed:
        note(f"{failed} of {total} images could not be scored (label 'error' in the CSV, reasons "
             "in its error column).")
    if n_scored == 0:
        raise CLIError(f"None of the {total} images could be scored; each is named above.{where}")
    note(f"{n_flagged} of {n_scored} images flagged as anomalous (score > {t:.6g}), "
         f"{n_regions} defect region{'' if n_regions == 1 else 's'}.{where}")
    sys.stderr.flush()
    return EXIT_SKIPPED if failed else EXIT_OK
