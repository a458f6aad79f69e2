"""Loaders for anomaly-detection data sets laid out in folders.

Nothing is downloaded: every loader reads a folder that is already on disk
and returns a :class:`sklearn.utils.Bunch` of file paths and labels.  The
images themselves are not read; pass ``bunch.images`` to the detector, and
``bunch`` to :func:`~skpadim.datasets.read_masks` for the ground-truth masks.
"""

import numpy as np

from ._files import (
    check_root,
    find_mask,
    images_in,
    records_to_bunch,
    require_dir,
    subdirs,
)

_MVTEC_LAYOUT = (
    "<category>/train/good/*.png, <category>/test/<defect>/*.png and "
    "<category>/ground_truth/<defect>/<name>_mask.png"
)
_MT_LAYOUT = "MT_Free/Imgs/<name>.jpg and MT_<Defect>/Imgs/<name>.jpg, masks <name>.png"



def load_mvtec(root, category=None, *, split="test"):
    """Load the file list of one MVTec AD category.

    The expected layout is that of MVTec AD::

        <root>/<category>/train/good/*.png
        <root>/<category>/test/<defect>/*.png          (test/good = normal)
        <root>/<category>/ground_truth/<defect>/<name>_mask.png

    Parameters
    ----------
    root : str or path-like
        Folder holding the categories, or the category folder itself when
        ``category`` is None.
    category : str or None, default=None
        Category name (e.g. ``"bottle"``); None reads ``root`` as the
        category folder.
    split : {"train", "test"}, default="test"
        Which split to list.

    Returns
    -------
    data : sklearn.utils.Bunch
        With keys ``images`` (list of str, sorted paths), ``labels`` (int64
        ndarray, 1 = anomalous), ``masks`` (list of str or None: the mask of
        each defective image, None for normal ones), ``defect_types``
        (str ndarray, ``"good"`` for normal images, otherwise the defect
        folder name) and ``root`` (str, the ``root`` passed in).

    Raises
    ------
    FileNotFoundError
        If a folder of the layout is missing, or a defective image has no
        mask in ``ground_truth``.
    ValueError
        If ``split`` is not valid, or a split or defect folder holds no
        images.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import load_mvtec
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub in ["train/good", "test/good", "test/crack", "ground_truth/crack"]:
    ...     (root / "tile" / sub).mkdir(parents=True)
    >>> Image.new("L", (8, 8)).save(root / "tile/train/good/000.png")
    >>> Image.new("L", (8, 8)).save(root / "tile/test/good/000.png")
    >>> Image.new("L", (8, 8)).save(root / "tile/test/crack/000.png")
    >>> Image.new("L", (8, 8)).save(root / "tile/ground_truth/crack/000_mask.png")
    >>> data = load_mvtec(root, "tile")
    >>> data.labels.tolist(), data.defect_types.tolist()
    ([1, 0], ['crack', 'good'])
    >>> [m is None for m in data.masks]
    [False, True]
    >>> len(load_mvtec(root / "tile", split="train").images)
    1
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    root = check_root(root, "MVTec AD")
    cat_dir = root if category is None else root / str(category)
    if category is not None and not cat_dir.is_dir():
        found = [p.name for p in subdirs(root)]
        raise FileNotFoundError(
            f"MVTec AD category folder '{cat_dir}' does not exist; "
            f"'{root}' holds the subfolders {found}."
        )
    split_dir = cat_dir / split
    hint = ""
    if category is None:
        hint = "; pass category=<name> if root holds categories"
    require_dir(split_dir, f"the MVTec AD layout {_MVTEC_LAYOUT}{hint}")
    defect_dirs = subdirs(split_dir)
    if not defect_dirs:
        raise ValueError(
            f"Folder '{split_dir}' holds no subfolders; expected 'good' and one "
            f"folder per defect type (MVTec AD layout {_MVTEC_LAYOUT})."
        )
    records = []
    for d in defect_dirs:
        for img in images_in(d):
            if d.name == "good":
                records.append((img, 0, None, "good"))
                continue
            gt_dir = cat_dir / "ground_truth" / d.name
            mask = find_mask(gt_dir, [img.stem + "_mask"])
            if mask is None:
                raise FileNotFoundError(
                    f"Defective image '{img}' has no mask: expected "
                    f"'{gt_dir / (img.stem + '_mask.png')}'."
                )
            records.append((img, 1, mask, d.name))
    return records_to_bunch(records, root)


def load_folder(root, *, normal_dir="good", mask_dir=None):
    """Load the file list of a folder of normal and anomalous images.

    The expected layout is::

        <root>/<normal_dir>/*.png                 normal images
        <root>/<defect>/*.png                     anomalous images, one folder
                                                  per defect type
        <root>/<mask_dir>/<defect>/<stem>.png     optional masks (or
                                                  <stem>_mask.png)

    Only files directly inside each folder are listed (no recursion); files
    directly inside ``root`` and hidden folders are ignored.

    Parameters
    ----------
    root : str or path-like
        The data set folder.
    normal_dir : str, default="good"
        Name of the subfolder holding the normal images.
    mask_dir : str or None, default=None
        Name of the subfolder holding the masks of the anomalous images, in
        one subfolder per defect type; it is not read as a defect type.
        A mask is ``<stem>.<ext>`` or ``<stem>_mask.<ext>`` with any image
        extension.  Anomalous images without a mask get None.

    Returns
    -------
    data : sklearn.utils.Bunch
        With keys ``images`` (list of str, sorted paths), ``labels`` (int64
        ndarray, 1 = anomalous), ``masks`` (list of str or None; None for
        normal images and for anomalous images without a mask),
        ``defect_types`` (str ndarray, ``"good"`` for normal images,
        otherwise the folder name) and ``root`` (str).

    Raises
    ------
    FileNotFoundError
        If ``root``, ``root/normal_dir`` or ``root/mask_dir`` is missing.
    ValueError
        If a folder holds no images.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import load_folder
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub in ["ok", "dent", "masks/dent"]:
    ...     (root / sub).mkdir(parents=True)
    >>> for name in ["ok/a.png", "ok/b.png", "dent/c.jpg", "masks/dent/c.png"]:
    ...     Image.new("L", (8, 8)).save(root / name)
    >>> data = load_folder(root, normal_dir="ok", mask_dir="masks")
    >>> data.labels.tolist(), data.defect_types.tolist()
    ([1, 0, 0], ['dent', 'good', 'good'])
    >>> [Path(m).name if m else None for m in data.masks]
    ['c.png', None, None]
    """
    root = check_root(root, "Image")
    normal = root / str(normal_dir)
    require_dir(
        normal, f"normal_dir={normal_dir!r}: the folder of the normal images"
    )
    mask_root = None
    if mask_dir is not None:
        mask_root = root / str(mask_dir)
        require_dir(mask_root, f"mask_dir={mask_dir!r}: the folder of the masks")
    records = [(img, 0, None, "good") for img in images_in(normal)]
    for d in subdirs(root):
        if d == normal or d == mask_root:
            continue
        for img in images_in(d):
            mask = None
            if mask_root is not None:
                mask = find_mask(mask_root / d.name, [img.stem, img.stem + "_mask"])
            records.append((img, 1, mask, d.name))
    return records_to_bunch(records, root)


def _photos_in(folder):
    """The images of a Magnetic Tile ``Imgs`` folder: its non-.png image files."""
    photos = [p for p in images_in(folder) if p.suffix.lower() != ".png"]
    if not photos:
        raise ValueError(
            f"Folder '{folder}' holds no images, only .png masks; expected "
            "<name>.jpg images next to their <name>.png masks."
        )
    return photos


def load_magnetic_tile(root, *, split=None, test_every=5):
    """Load the file list of the Magnetic Tile Defect data set.

    The expected layout is that of the data set of Huang et al. (2018)::

        <root>/MT_Free/Imgs/<name>.jpg         normal images
        <root>/MT_<Defect>/Imgs/<name>.jpg     defective images
        <root>/MT_*/Imgs/<name>.png            the mask of <name>.jpg
                                               (pixel > 127 = defect)

    The images of a folder are its image files other than .png (the .png
    files are the masks).  The data set has no official split.  This loader
    makes a deterministic one: the normal images, sorted by file name,
    whose index ``i`` satisfies ``i % test_every != 0`` are the training set;
    the other normal images and all defective images are the test set.

    Parameters
    ----------
    root : str or path-like
        Folder holding ``MT_Free`` and the ``MT_<Defect>`` folders.
    split : {None, "train", "test"}, default=None
        None lists every image; ``"train"`` and ``"test"`` as above.
    test_every : int, default=5
        Every ``test_every``-th normal image (starting with the first) goes
        to the test set.  Must be at least 2.

    Returns
    -------
    data : sklearn.utils.Bunch
        With keys ``images`` (list of str, sorted paths), ``labels`` (int64
        ndarray, 1 = anomalous), ``masks`` (list of str or None: the mask of
        each defective image; None for the normal images, whose masks in the
        data set are all zero), ``defect_types`` (str ndarray, ``"good"``
        for normal images, otherwise the folder name without ``"MT_"``, e.g.
        ``"Blowhole"``) and ``root`` (str).

    Raises
    ------
    FileNotFoundError
        If ``root`` or ``root/MT_Free/Imgs`` is missing, or a defective image
        has no mask.
    ValueError
        If ``split`` or ``test_every`` is not valid, or a folder holds no
        images.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import load_magnetic_tile
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub in ["MT_Free/Imgs", "MT_Crack/Imgs"]:
    ...     (root / sub).mkdir(parents=True)
    >>> for name in ["MT_Free/Imgs/a", "MT_Free/Imgs/b", "MT_Crack/Imgs/c"]:
    ...     Image.new("L", (8, 8)).save(root / (name + ".jpg"))
    ...     Image.new("L", (8, 8)).save(root / (name + ".png"))
    >>> data = load_magnetic_tile(root)
    >>> data.labels.tolist(), data.defect_types.tolist()
    ([1, 0, 0], ['Crack', 'good', 'good'])
    >>> len(load_magnetic_tile(root, split="train", test_every=2).images)
    1
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}.")
    if (
        isinstance(test_every, bool)
        or not isinstance(test_every, (int, np.integer))
        or test_every < 2
    ):
        raise ValueError(f"test_every must be an integer >= 2, got {test_every!r}.")
    root = check_root(root, "Magnetic Tile")
    free = root / "MT_Free" / "Imgs"
    require_dir(free, f"Magnetic Tile layout {_MT_LAYOUT}")
    normal = _photos_in(free)
    records = []
    for i, img in enumerate(normal):  # sorted by name: the split rule's order
        in_test = i % test_every == 0
        if split is None or in_test == (split == "test"):
            records.append((img, 0, None, "good"))
    defect_dirs = [
        d for d in subdirs(root) if d.name.startswith("MT_") and d.name != "MT_Free"
    ]
    if split != "train":
        for d in defect_dirs:
            imgs = d / "Imgs"
            require_dir(imgs, f"Magnetic Tile layout {_MT_LAYOUT}")
            for img in _photos_in(imgs):
                mask = img.with_suffix(".png")
                if not mask.is_file():
                    raise FileNotFoundError(
                        f"Defective image '{img}' has no mask: expected '{mask}'."
                    )
                records.append((img, 1, mask, d.name[len("MT_") :]))
    return records_to_bunch(records, root)
