"""Finding the images a command reads, and naming the pictures it writes."""

import os
from pathlib import Path

from .._batch import ImageFailure
from ._common import CLIError


def _extensions():
    from ..datasets import IMAGE_EXTENSIONS  # imported here: skpadim.datasets imports scikit-learn

    return IMAGE_EXTENSIONS


def _is_image(name, extensions):
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def images_under(folder):
    """Image files under ``folder``, recursively, sorted; hidden files and folders skipped.

    A folder that cannot be listed becomes an :class:`ImageFailure` in its
    place (its images are unknown), so the caller reports it like an
    unreadable image instead of silently missing its images.
    """
    extensions = _extensions()
    found = []

    def unlisted(exc):
        path = exc.filename if exc.filename is not None else folder
        found.append(ImageFailure(os.fspath(path), f"cannot list the folder: {exc.strerror or exc}"))

    for here, dirs, files in os.walk(folder, onerror=unlisted):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(here, f) for f in sorted(files) if _is_image(f, extensions))
    return found


def _no_images(folder, found):
    listed = ", ".join(sorted(set(f.reason for f in found)))
    why = f" ({listed})" if found else ""
    return (f"No images found under '{folder}'{why} (searched recursively for "
            f"{', '.join(_extensions())})")


def good_images(folder):
    """The training images of ``skpadim fit``: every image under ``folder``."""
    if not os.path.exists(folder):
        raise CLIError(
            f"Folder '{folder}' does not exist; pass the folder of good images, e.g. "
            "skpadim fit data/good --out model.skpadim"
        )
    if not os.path.isdir(folder):
        raise CLIError(f"'{folder}' is a file; pass the folder that holds the good images.")
    items = images_under(folder)
    if not any(isinstance(p, str) for p in items):
        raise CLIError(f"{_no_images(folder, items)}; pass the folder that holds the good images.")
    return items


def collect_images(args):
    """``(item, overlay name)`` of every image named by ``skpadim predict IMAGES...``.

    A folder contributes every image under it (recursively), named by the
    folder's name and the image's path inside it (``good/000.png`` for
    ``data/good``); a file is taken as given, named by its file name. A
    name that does not exist is an error (a typo); a link that points
    nowhere is an image that cannot be read.
    """
    items = []
    for arg in args:
        if not os.path.lexists(arg):
            raise CLIError(f"'{arg}' does not exist; pass image files or folders of images.")
        if os.path.isdir(arg):
            found = images_under(arg)
            if not any(isinstance(p, str) for p in found):
                raise CLIError(f"{_no_images(arg, found)}.")
            parent = os.path.dirname(os.path.abspath(arg))
            for p in found:
                name = p.path if isinstance(p, ImageFailure) else p
                items.append((p, os.path.relpath(os.path.abspath(name), parent)))
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
