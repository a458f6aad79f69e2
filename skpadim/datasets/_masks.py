"""Reading ground-truth masks as boolean arrays."""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.utils import Bunch


def _shape_list(shapes, n):
    if shapes is None:
        return [None] * n
    arr = np.asarray(shapes)
    if arr.shape == (2,):
        return [tuple(int(s) for s in arr)] * n
    if arr.ndim == 2 and arr.shape == (n, 2):
        return [tuple(int(s) for s in row) for row in arr]
    raise ValueError(
        f"shapes must be one (height, width) pair or {n} of them (one per "
        f"mask), got an array of shape {arr.shape}."
    )


def read_masks(mask_paths, shapes=None):
    """Read ground-truth masks as boolean arrays.

    Parameters
    ----------
    mask_paths : list of (str, path-like or None), or Bunch
        Mask file paths; None stands for an image without a defect.  A
        Bunch returned by a loader of this module is accepted too: its
        ``masks`` are read and the shape of each None entry is taken from
        the header of the matching file in ``images``.
    shapes : (height, width) or list of (height, width), default=None
        Shape of every mask, or one shape per mask.  Required for None
        entries unless ``mask_paths`` is a Bunch; when given, every mask
        read from a file must have this shape.

    Returns
    -------
    masks : list of ndarray of shape (height, width), dtype=bool
        True where the mask pixel is > 127 (colour masks are converted to
        grayscale first); all False for None entries.

    Raises
    ------
    ValueError
        If the shape of a None entry is unknown, or a mask does not have
        the shape given in ``shapes``.
    FileNotFoundError
        If a mask file does not exist.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import read_masks
    >>> path = Path(tempfile.mkdtemp()) / "mask.png"
    >>> Image.new("L", (6, 4), color=255).save(path)
    >>> masks = read_masks([path, None], shapes=(4, 6))
    >>> [m.shape for m in masks], [int(m.sum()) for m in masks]
    ([(4, 6), (4, 6)], [24, 0])
    """
    images = None
    if isinstance(mask_paths, Bunch) or (
        isinstance(mask_paths, dict) and "masks" in mask_paths
    ):
        images = mask_paths.get("images")
        mask_paths = mask_paths["masks"]
    mask_paths = list(mask_paths)
    wanted = _shape_list(shapes, len(mask_paths))
    out = []
    for i, path in enumerate(mask_paths):
        shape = wanted[i]
        if path is None:
            if shape is None and images is not None:
                with Image.open(images[i]) as im:
                    shape = (im.height, im.width)
            if shape is None:
                raise ValueError(
                    f"mask_paths[{i}] is None and its shape is unknown: pass "
                    "shapes=(height, width) or the Bunch returned by a loader."
                )
            out.append(np.zeros(shape, dtype=bool))
            continue
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"Mask file '{path}' (mask_paths[{i}]) does not exist."
            )
        with Image.open(path) as im:
            mask = np.asarray(im.convert("L")) > 127
        if shape is not None and mask.shape != shape:
            raise ValueError(
                f"Mask '{path}' (mask_paths[{i}]) has shape {mask.shape}, "
                f"expected {shape} from shapes."
            )
        out.append(mask)
    return out
