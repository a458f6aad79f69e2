"""``skpadim evaluate``: measure a model on labelled test images; write an HTML report.

Images (and masks) that cannot be read are named on stderr, left out of
the metrics and listed in the summary and the report; the run ends with
exit status 3 (``--strict``: the first one stops it). The report is
written under a temporary name and renamed when complete.
"""

import os
from pathlib import Path

from ._args import NATIVE, add_command, add_run_options, finite, fraction, positive_int
from ._common import (
    EXIT_OK, EXIT_SKIPPED, CLIError, check_output_file, note, print_skipped, progress,
    report_unreadable,
)

NAME = "evaluate"
HELP = "measure a model on labelled test images; write an HTML report"
EPILOG = """\
Example:
  skpadim evaluate model.skpadim --data data/test
  skpadim evaluate model.skpadim --data mvtec/bottle --layout mvtec --report bottle.html

Layouts (--layout, detected when left out):
  folder         DIR/good/* normal images, DIR/<defect>/* defective images,
                 optional masks DIR/masks/<defect>/<name>.png (or --mask-dir)
  mvtec          an MVTec AD category folder: DIR/test/<defect>/*.png and
                 DIR/ground_truth/<defect>/<name>_mask.png (the test split)
  magnetic-tile  DIR/MT_Free/Imgs and DIR/MT_<Defect>/Imgs (the test split of
                 skpadim.datasets.load_magnetic_tile)
Prints image AUROC, pixel AUROC, AUPRO and F1-max, and writes a self-contained
HTML report (curves, per-defect table, thumbnails of the good images that look
most anomalous and of the defects that look most normal). Images that cannot
be read are left out of the metrics and listed (stderr, summary, report);
the run then ends with exit status 3 (--strict stops at the first one)."""


def add_parser(subparsers):
    p = add_command(subparsers, NAME, HELP, EPILOG, run)
    p.add_argument("model", metavar="MODEL",
                   help="model file written by skpadim fit, or an export (.onnx file or OpenVINO "
                        "folder, which runs without torch)")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of labelled test images")
    p.add_argument("--layout", choices=["folder", "mvtec", "magnetic-tile"], default=None,
                   help="how DIR is organized (default: detected)")
    p.add_argument("--normal-dir", default="good", metavar="NAME",
                   help="folder layout: subfolder of the good images (default: good)")
    p.add_argument("--mask-dir", default=None, metavar="NAME",
                   help="folder layout: subfolder of the masks (default: masks or ground_truth "
                        "if present)")
    p.add_argument("--threshold", type=finite, default=None, metavar="T",
                   help="threshold for the counts of flagged and missed images (default: the model's)")
    p.add_argument("--report", default="report.html", metavar="FILE",
                   help="HTML report to write (default: report.html)")
    p.add_argument("--no-report", action="store_true", help="print the metrics only")
    p.add_argument("--n-thumbnails", type=positive_int, default=8, metavar="N",
                   help="thumbnails per gallery in the report (default: 8)")
    p.add_argument("--fpr-limit", type=fraction, default=0.3, metavar="F",
                   help="false-positive-rate limit of the AUPRO (default: 0.3)")
    add_run_options(p)
    return p


def _detect_layout(root):
    root = Path(root)
    if (root / "good").is_dir():
        return "folder"
    if (root / "test").is_dir():
        return "mvtec"
    if (root / "MT_Free").is_dir():
        return "magnetic-tile"
    raise CLIError(
        f"Cannot tell the layout of '{root}': expected good/ (folder layout), test/ (an MVTec AD "
        "category folder, e.g. mvtec/bottle) or MT_Free/ (Magnetic Tile); pass --layout."
    )


def _load_data(args):
    from ..datasets import load_folder, load_magnetic_tile, load_mvtec

    root = args.data
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.exists(root) else "is not a folder"
        raise CLIError(f"--data '{root}' {what}; pass the folder of the test images.")
    layout = args.layout or _detect_layout(root)
    if layout == "mvtec":
        if not os.path.isdir(os.path.join(root, "test")):
            raise CLIError(
                f"'{root}' has no test/ folder; for --layout mvtec pass one category folder, "
                "e.g. --data mvtec/bottle."
            )
        return load_mvtec(root, split="test"), layout
    if layout == "magnetic-tile":
        return load_magnetic_tile(root, split="test"), layout
    mask_dir = args.mask_dir
    if mask_dir is None:
        mask_dir = next((d for d in ("masks", "ground_truth") if os.path.isdir(os.path.join(root, d))), None)
    return load_folder(root, normal_dir=args.normal_dir, mask_dir=mask_dir), layout


def _need_both(labels, data, left_out=""):
    import numpy as np

    n_bad = int(np.sum(labels))
    if n_bad == 0 or n_bad == len(labels):
        raise CLIError(
            f"--data '{data}' holds {len(labels) - n_bad} good and {n_bad} defective images"
            f"{left_out}; evaluate needs both."
        )


def _suggested(scores, t):
    """A threshold between the F1-optimal score ``t`` and the next lower score.

    Flags exactly the images with score >= t whether a tool compares with
    ``>`` (skpadim predict) or ``>=`` (skpadim.metrics).
    """
    import numpy as np

    below = scores[scores < t]
    return float((t + below.max()) / 2) if below.size else float(np.nextafter(t, -np.inf))


def _score_all(detector, paths, args):
    """Scores and maps of the readable images: ``(kept indices, scores, maps, failures)``."""
    import numpy as np

    from ..exceptions import UnreadableImageError
    from .._batch import ImageFailure, score_images

    kept, scores, maps, failures = [], [], [], []
    with progress(len(paths), NAME, not args.quiet) as bar:
        try:
            for r in score_images(detector, paths, with_maps=True, strict=args.strict, native=NATIVE):
                if r.error is None:
                    kept.append(r.index)
                    scores.append(r.score)
                    maps.append(r.map)
                else:
                    failures.append(ImageFailure(r.path, r.error))
                    report_unreadable(r.path, r.error, bar)
                bar.update(1)
        except UnreadableImageError as exc:  # --strict
            raise CLIError(f"{exc}; --strict stops at the first unreadable image (without it, "
                           "such images are left out of the metrics and listed).") from None
    return np.asarray(kept, dtype=int), np.asarray(scores, dtype=np.float64), maps, failures


def _mask_reason(exc, path):
    if isinstance(exc, OSError) and exc.strerror:  # permission, missing file...
        return exc.strerror
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_masks(paths, labels, maps, strict):
    """Masks of the images, None where unknown; failures for masks that cannot be read."""
    from PIL import Image

    from ..datasets import read_masks
    from .._batch import ImageFailure

    masks, failures = [], []
    for path, label, amap in zip(paths, labels, maps):
        if path is None and label == 1:
            masks.append(None)  # a defect without ground truth
            continue
        try:
            masks.append(read_masks([path], shapes=[amap.shape])[0])
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            why = _mask_reason(exc, path)
            if strict:
                raise CLIError(f"could not read the mask '{path}': {why} (--strict).") from None
            failures.append(ImageFailure(os.fspath(path), f"mask: {why}"))
            report_unreadable(path, why, None)
            masks.append(None)
    return masks, failures


def _metrics(labels, scores, maps, masks, fpr_limit):
    """Image and pixel metrics; the pixel ones on the images whose ground truth is known."""
    from ..metrics import aupro, f1_max, image_auroc, optimal_threshold, pixel_auroc

    known = [i for i in range(len(labels)) if masks[i] is not None]
    n_masks = int(sum(labels[i] == 1 for i in known))
    n_missing = int(labels.sum()) - n_masks
    m = {"pixel_auroc": None, "aupro": None, "pixel_masks": None, "pixel_maps": None, "pixel_note": ""}
    if n_masks == 0:
        m["pixel_note"] = "No ground-truth masks were found: pixel AUROC and AUPRO are not available."
    else:
        sub_masks, sub_maps = [masks[i] for i in known], [maps[i] for i in known]
        m.update(pixel_auroc=pixel_auroc(sub_masks, sub_maps), aupro=aupro(sub_masks, sub_maps, fpr_limit),
                 pixel_masks=sub_masks, pixel_maps=sub_maps)
        if n_missing:
            m["pixel_note"] = (
                f"{n_missing} defective images have no readable mask and are left out of the "
                "pixel metrics."
            )
    m["image_auroc"] = image_auroc(labels, scores)
    m["f1_max"] = f1_max(labels, scores)
    m["suggested_threshold"] = _suggested(scores, optimal_threshold(labels, scores))
    return m


def run(args):
    import numpy as np

    from ._describe import describe
    from ._model import load_model
    from ._predict import prepare, threshold

    data, layout = _load_data(args)
    labels = np.asarray(data.labels)
    _need_both(labels, args.data)
    report = None if args.no_report else args.report
    if report is not None:
        from ._report import require_matplotlib

        require_matplotlib("The HTML report (or pass --no-report)")
        check_output_file(report, "--report")
    detector = load_model(args.model)
    prepare(detector, args)
    t, source = threshold(args, detector)
    kept, scores, maps, failures = _score_all(detector, list(data.images), args)
    if not len(kept):
        raise CLIError(f"None of the {len(labels)} images under '{args.data}' could be scored; "
                       "each is named above.")
    labels = labels[kept]
    if failures:
        _need_both(labels, args.data, f" that could be scored ({len(failures)} could not)")
    images = [data.images[i] for i in kept]
    masks, mask_failures = _read_masks([data.masks[i] for i in kept], labels, maps, args.strict)
    failures += mask_failures
    ev = _metrics(labels, scores, maps, masks, args.fpr_limit)
    ev.update(
        data=args.data, layout=layout, model=args.model, images=images, masks=masks,
        names=[os.path.relpath(p, args.data) for p in images],
        defect_types=np.asarray(data.defect_types)[kept], labels=labels, scores=scores, maps=maps,
        threshold=t, threshold_source=source, flagged=scores > t,
        fpr_limit=args.fpr_limit, n_thumbnails=args.n_thumbnails, failures=failures,
        n_total=len(data.images),
    )
    _print_metrics(ev)
    if report is not None:
        from ._report import write_report

        ev["info"] = describe(detector, args.model)
        write_report(report, ev)
        print(f"Report: {report}")
    return EXIT_SKIPPED if failures else EXIT_OK


def _print_metrics(ev):
    labels, flagged = ev["labels"], ev["flagged"]
    good, bad = labels == 0, labels == 1

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"Evaluated {len(labels)} images ({int(good.sum())} good, {int(bad.sum())} defective) "
          f"from {ev['data']} ({ev['layout']} layout)")
    print_skipped(ev["failures"], f"Left out {len(ev['failures'])} files that could not be scored "
                                  f"({ev['n_total']} images in all):")
    print(f"Image AUROC       {fmt(ev['image_auroc'])}")
    print(f"Pixel AUROC       {fmt(ev['pixel_auroc'])}")
    print(f"AUPRO (FPR<={ev['fpr_limit']:g})  {fmt(ev['aupro'])}")
    print(f"F1-max (images)   {fmt(ev['f1_max'])}  "
          f"(use --threshold {ev['suggested_threshold']:.6g} to reach it)")
    print(f"At threshold {ev['threshold']:.6g} ({ev['threshold_source']}): {int((flagged & good).sum())} of "
          f"{int(good.sum())} good images flagged, {int((~flagged & bad).sum())} of {int(bad.sum())} "
          "defective images missed")
    if ev["pixel_note"]:
        note(ev["pixel_note"])
