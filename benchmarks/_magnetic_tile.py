"""The Magnetic Tile Defect data set, decoded and resized once, cached as .npy.

Used by ``compare_anomalib.py``: both implementations read the same cached
arrays, so they get the very same input values.
"""

import json
import time

import numpy as np

from _common import write_json

SEED = 0  # the order of the training images (and the detectors' random_state)
QUICK_TRAIN, QUICK_TEST_STEP = 40, 10


def load_gray(paths, size):
    """Decode grayscale image files and resize them as PadimDetector does; (N, h, w) float32."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    out = np.empty((len(paths), *size), np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"))  # writable, for torch.from_numpy
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ValueError(f"{path} is not a grayscale image; this script caches one channel.")
        t = torch.from_numpy(rgb).to(torch.float32).div_(255.0).movedim(-1, 0)[None]
        if tuple(t.shape[-2:]) != tuple(size):
            t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        out[i] = t[0, 0].clamp(0, 1).numpy()
    return out


def resize_mask(mask, size):
    """Like anomalib's data pipeline: torchvision's Resize of a Mask (nearest)."""
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    m = tv_tensors.Mask(torch.from_numpy(mask)[None].to(torch.uint8))
    return TF.resize(m, list(size))[0].numpy().astype(bool)


def prepare_data(root, size, quick, cache_dir):
    """Cache train/test images, masks and labels; return the data description."""
    from skpadim.datasets import load_magnetic_tile, read_masks

    meta_path = cache_dir / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    cache_dir.mkdir(parents=True, exist_ok=True)
    train = load_magnetic_tile(root, split="train")
    test = load_magnetic_tile(root, split="test")
    # A fixed random order of the training images: the first n of it are the
    # n training images (nested subsets: 100 within 400 within all).
    order = np.random.default_rng(SEED).permutation(len(train.images))
    train_paths = [train.images[i] for i in order]
    test_idx = np.arange(len(test.images))
    if quick:
        train_paths = train_paths[:QUICK_TRAIN]
        test_idx = test_idx[::QUICK_TEST_STEP]  # 20 normal + 40 defective images
    test_paths = [test.images[i] for i in test_idx]
    t0 = time.perf_counter()
    masks = read_masks({"images": test_paths, "masks": [test.masks[i] for i in test_idx]})
    masks = np.stack([resize_mask(m, size) for m in masks])
    labels = np.asarray(test.labels)[test_idx]
    for name, array in (("train", load_gray(train_paths, size)), ("test", load_gray(test_paths, size)),
                        ("masks", masks), ("labels", labels)):
        np.save(cache_dir / f"{name}.npy", array)
    meta = dict(
        root=str(root), image_size=list(size), n_train=len(train_paths), n_test=len(test_paths),
        n_test_defective=int(labels.sum()),
        defective_with_empty_mask_after_resize=int(sum(1 for m, y in zip(masks, labels) if y == 1 and not m.any())),
        anomalous_pixel_fraction=float(masks.mean()), prepare_s=time.perf_counter() - t0,
    )
    write_json(meta_path, meta)  # last: its presence marks a complete cache
    return meta
