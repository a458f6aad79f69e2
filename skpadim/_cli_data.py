"""Images for the command line: finding them, progress bars, scores and maps."""

import os
from pathlib import Path

import numpy as np

from ._cli_model import CLIError
from .datasets import IMAGE_EXTENSIONS

_EXTENSIONS = ", ".join(IMAGE_EXTENSIONS)


def _is_image(name):
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def images_under(folder):
    """Image files under ``folder``, recursively, sorted; hidden files and folders skipped."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(here, f) for f in sorted(files) if _is_image(f))
    return found


def good_images(folder):
    """The training images of ``skpadim fit``: every image under ``folder``."""
    if not os.path.exists(folder):
        raise CLIError(
            f"Folder '{folder}' does not exist; pass the folder of good images, e.g. "
            "skpadim fit data/good --out model.skpadim"
        )
    if not os.path.isdir(folder):
        raise CLIError(f"'{folder}' is a file; pass the folder that holds the good images.")
    paths = images_under(folder)
    if not paths:
        raise CLIError(
            f"No images found under '{folder}' (searched recursively for {_EXTENSIONS}); "
            "pass the folder that holds the good images."
        )
    return paths


def collect_images(args):
    """``(path, overlay name)`` of every image named by ``skpadim predict IMAGES...``.

    A folder contributes every image under it (recursively), named by the
    folder's name and the image's path inside it (``good/000.png`` for
    ``data/good``); a file is taken as given, named by its file name.
    """
    items = []
    for arg in args:
        if not os.path.exists(arg):
            raise CLIError(f"'{arg}' does not exist; pass image files or folders of images.")
        if os.path.isdir(arg):
            paths = images_under(arg)
            if not paths:
                raise CLIError(
                    f"No images found under '{arg}' (searched recursively for {_EXTENSIONS})."
                )
            parent = os.path.dirname(os.path.abspath(arg))
            items.extend((p, os.path.relpath(os.path.abspath(p), parent)) for p in paths)
        else:
            items.append((arg, os.path.basename(arg)))
    return items


def overlay_names(names, out_dir):
    """One distinct ``.png`` path under ``out_dir`` per name (``-2``, ``-3``... on clashes)."""
    used, out = set(), []
    for name in names:
        base = Path(out_dir) / Path(name).with_suffix(".png")
        path, k = base, 1
        while str(path) in used:
            k += 1
            path = base.with_name(f"{base.stem}-{k}.png")
        used.add(str(path))
        out.append(path)
    return out


def progress(total, desc, enabled):
    """A bar over images on stderr with the time left (the detector's own bar)."""
    from ._detector import _progress_bar

    return _progress_bar(total, desc, disable=not enabled)


def scores_and_maps(detector, paths, bar, *, with_maps):
    """Yield ``(index, anomaly score, map or None)`` for every image, in order.

    The anomaly score is ``-detector.score_samples``, computed from the same
    maps as :meth:`PadimDetector.anomaly_map` in one pass over the backbone;
    maps are resized to each image's own size as ``anomaly_map`` does.
    """
    from ._engine.images import resize

    i = 0
    for maps, sizes in detector._maps(paths, desc="predict"):
        scores = maps.amax(dim=(1, 2)).double().cpu().numpy()  # == -score_samples
        for m, size, score in zip(maps, sizes, scores):
            amap = None
            if with_maps:
                amap = resize(m[None, None], size)[0, 0] if tuple(m.shape) != size else m
                amap = amap.cpu().numpy()
            yield i, float(score), amap
            i += 1
        bar.update(len(sizes))


def flag(scores, threshold):
    """Boolean "anomalous" per score, as ``PadimDetector.predict`` for ``threshold``."""
    return np.asarray(scores, dtype=np.float64) > threshold
