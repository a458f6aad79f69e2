"""Listing the image files of a data set folder, and the Bunch loaders return."""

from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image(path):
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def subdirs(folder):
    """Sorted non-hidden subfolders of ``folder``."""
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
    )


def images_in(folder):
    """Sorted image files directly inside ``folder``; raise if there are none."""
    files = sorted(p for p in folder.iterdir() if is_image(p))
    if not files:
        raise ValueError(
            f"Folder '{folder}' holds no images; expected files with one of the "
            f"extensions {', '.join(IMAGE_EXTENSIONS)} (case-insensitive)."
        )
    return files


def check_root(root, what):
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{what} root folder '{root}' does not exist.")
    if not root.is_dir():
        raise NotADirectoryError(f"{what} root '{root}' is not a folder.")
    return root


def require_dir(folder, what):
    if not folder.is_dir():
        parent = folder.parent
        found = [p.name for p in subdirs(parent)] if parent.is_dir() else []
        raise FileNotFoundError(
            f"Expected folder '{folder}' ({what}), but it does not exist; "
            f"'{parent}' holds the subfolders {found}."
        )


def find_mask(folder, stems):
    """First existing ``folder/<stem><ext>`` over ``stems`` and image extensions."""
    if not folder.is_dir():
        return None
    by_name = {p.name.lower(): p for p in folder.iterdir() if is_image(p)}
    for stem in stems:
        for ext in IMAGE_EXTENSIONS:
            hit = by_name.get((stem + ext).lower())
            if hit is not None:
                return hit
    return None


def records_to_bunch(records, root):
    """Build the Bunch from ``(image, label, mask, defect_type)`` records."""
    records = sorted(records, key=lambda r: str(r[0]))
    return Bunch(
        images=[str(r[0]) for r in records],
        labels=np.array([r[1] for r in records], dtype=np.int64),
        masks=[None if r[2] is None else str(r[2]) for r in records],
        defect_types=np.array([r[3] for r in records], dtype=str),
        root=str(root),
    )
