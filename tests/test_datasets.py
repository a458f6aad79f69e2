"""Tests of skpadim.datasets: the synthetic generator and the folder loaders."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.utils import Bunch

from skpadim.datasets import (
    DEFECT_TYPES,
    load_folder,
    load_magnetic_tile,
    load_mvtec,
    make_anomaly_images,
    read_masks,
)
from skpadim.datasets._synthetic import _generate


# --------------------------------------------------------------------------
# make_anomaly_images
# --------------------------------------------------------------------------


@pytest.mark.parametrize("grayscale", [False, True])
@pytest.mark.parametrize("image_size, hw", [(32, (32, 32)), ((48, 80), (48, 80))])
def test_make_anomaly_images_shapes_and_dtypes(grayscale, image_size, hw):
    X, y, masks = make_anomaly_images(
        5, 3, image_size=image_size, grayscale=grayscale, random_state=0
    )
    assert X.dtype == np.uint8
    assert X.shape == ((8, *hw) if grayscale else (8, *hw, 3))
    assert y.shape == (8,) and y.dtype.kind == "i"
    assert masks.shape == (8, *hw) and masks.dtype == bool


@pytest.mark.parametrize("n_normal, n_anomalous", [(7, 4), (0, 3), (3, 0)])
def test_make_anomaly_images_normal_images_come_first(n_normal, n_anomalous):
    X, y, masks = make_anomaly_images(
        n_normal, n_anomalous, image_size=32, random_state=1
    )
    assert y.tolist() == [0] * n_normal + [1] * n_anomalous
    has_defect = masks.any(axis=(1, 2))
    np.testing.assert_array_equal(has_defect, y == 1)


def test_make_anomaly_images_is_deterministic():
    a = make_anomaly_images(6, 6, image_size=64, random_state=42)
    b = make_anomaly_images(6, 6, image_size=64, random_state=42)
    c = make_anomaly_images(
        6, 6, image_size=64, random_state=np.random.RandomState(42)
    )
    for first, second, third in zip(a, b, c):
        np.testing.assert_array_equal(first, second)
        np.testing.assert_array_equal(first, third)
    d = make_anomaly_images(6, 6, image_size=64, random_state=43)
    assert not np.array_equal(a[0], d[0])
    assert not np.array_equal(a[2], d[2])


@pytest.mark.parametrize("grayscale", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_images_differ_from_clean_texture_exactly_inside_mask(grayscale, seed):
    X, y, masks, clean, kinds = _generate(
        4, 24, image_size=(64, 96), grayscale=grayscale, random_state=seed
    )
    X_public, _, masks_public = make_anomaly_images(
        4, 24, image_size=(64, 96), grayscale=grayscale, random_state=seed
    )
    np.testing.assert_array_equal(X, X_public)
    np.testing.assert_array_equal(masks, masks_public)
    changed = X != clean
    if not grayscale:
        changed = changed.any(axis=-1)
    np.testing.assert_array_equal(changed, masks)
    np.testing.assert_array_equal(X[:4], clean[:4])
    assert set(kinds[:4]) == {"good"} and set(kinds[4:]) <= set(DEFECT_TYPES)


@pytest.mark.parametrize("image_size", [32, 64, (40, 200), 128, 256])
def test_mask_area_is_between_0_3_and_10_percent(image_size):
    _, _, masks = make_anomaly_images(0, 30, image_size=image_size, random_state=3)
    area = masks.mean(axis=(1, 2))
    assert area.min() >= 0.003
    assert area.max() <= 0.10


def test_defects_are_high_contrast():
    X, y, masks, clean, kinds = _generate(0, 30, image_size=128, random_state=5)
    X, clean = X.astype(float), clean.astype(float)
    for img, ref, mask in zip(X, clean, masks):
        inside = np.abs(img[mask] - ref[mask]).mean()
        assert inside > 60, inside
        # Several times the texture's own variation around its mean.
        assert inside > 3 * ref.std()


def test_normal_images_share_one_textured_distribution():
    X, _, _ = make_anomaly_images(20, 0, image_size=64, random_state=0)
    X = X.astype(float)
    means = X.mean(axis=(1, 2, 3))
    within = X.std(axis=(1, 2, 3))
    assert within.min() > 10  # a texture, not a flat colour
    assert means.std() < 0.5 * within.mean()  # same material everywhere
    # ... yet no two images are identical (random phase and orientation).
    flat = X.reshape(len(X), -1)
    assert len({row.tobytes() for row in flat.astype(np.uint8)}) == len(X)


@pytest.mark.parametrize("defects", [("spot",), "scratch", ["missing", "spot"]])
def test_defects_are_drawn_from_the_given_types(defects):
    allowed = {defects} if isinstance(defects, str) else set(defects)
    *_, kinds = _generate(0, 20, image_size=32, defects=defects, random_state=0)
    assert set(kinds) == allowed


def test_all_default_defect_types_appear():
    *_, kinds = _generate(0, 30, image_size=32, random_state=0)
    assert set(kinds) == set(DEFECT_TYPES)


def test_misalignment_none_keeps_the_images_of_earlier_versions():
    a = make_anomaly_images(4, 3, image_size=48, random_state=5)
    b = make_anomaly_images(4, 3, image_size=48, random_state=5, misalignment=None)
    for x, z in zip(a, b):
        np.testing.assert_array_equal(x, z)


def test_misalignment_moves_a_registered_part_and_keeps_masks_exact():
    kw = dict(image_size=64, grayscale=True, random_state=3)
    plain = _generate(6, 6, **kw)[3]
    aligned = _generate(6, 6, misalignment=(0.0, 0.0), **kw)[3]
    X, y, masks, clean, _ = _generate(6, 6, misalignment=(0.1, 10.0), **kw)
    # The same textures (the part is drawn after them), with the part painted over.
    part = aligned != plain
    assert 0.05 < part[0].mean() < 0.2
    assert (part[1:] <= part[0]).all()  # aligned: the same pixels in every image
    moved = clean != plain
    centres = [np.argwhere(m).mean(0) for m in moved]
    assert len({tuple(np.round(c, 1)) for c in centres}) == 12  # a pose per image
    assert max(np.abs(c - 31.5).max() for c in centres) <= 0.1 * 64 + 1
    assert max((m ^ part[0]).mean() for m in moved) > 0.05
    # An anomalous image still differs from its clean image exactly on its mask.
    np.testing.assert_array_equal(X != clean, masks)
    assert masks[6:].any(axis=(1, 2)).all() and not masks[:6].any()


@pytest.mark.parametrize(
    "misalignment", [0.1, (0.1,), (0.3, 1.0), (0.1, -1.0), (0.1, 181), (True, 1.0), (np.nan, 1.0), "ab"]
)
def test_misalignment_is_validated(misalignment):
    with pytest.raises(ValueError, match=r"misalignment must be None or a \(max_shift, max_degrees\) pair"):
        make_anomaly_images(2, 1, image_size=32, misalignment=misalignment)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_normal": -1}, r"n_normal must be a non-negative integer, got -1"),
        ({"n_anomalous": -2}, r"n_anomalous must be a non-negative integer, got -2"),
        ({"n_normal": 2.5}, r"n_normal must be a non-negative integer, got 2\.5"),
        ({"n_normal": 0, "n_anomalous": 0}, r"n_normal \+ n_anomalous must be at"),
        ({"defects": ("scratch", "dent")}, r"'dent'.*'scratch', 'spot', 'missing'"),
        ({"defects": ()}, r"defects must name at least one"),
        ({"image_size": 16}, r"image_size must be at least 32.*got 16"),
        ({"image_size": (64, 31)}, r"image_size must be at least 32.*\(64, 31\)"),
        ({"image_size": (6, 6, 3)}, r"image_size must be an int or a \(height, wi"),
        ({"image_size": "big"}, r"image_size must be an int or a \(height, width\)"),
        ({"image_size": 64.0}, r"image_size must be an int or a \(height, width\)"),
    ],
)
def test_make_anomaly_images_rejects_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_anomaly_images(**kwargs)


# --------------------------------------------------------------------------
# Helpers for folder trees
# --------------------------------------------------------------------------


def _save(path, size=(8, 6), value=0, mode="L"):
    """Write a tiny image of ``size`` = (width, height) filled with ``value``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=value).save(path)
    return path


@pytest.fixture
def mvtec_root(tmp_path):
    cat = tmp_path / "tile"
    for name in ["000.png", "001.png"]:
        _save(cat / "train" / "good" / name)
    _save(cat / "test" / "good" / "000.png")
    for defect, names in {"crack": ["000", "001"], "oil": ["000"]}.items():
        for name in names:
            _save(cat / "test" / defect / f"{name}.png", value=90)
            _save(cat / "ground_truth" / defect / f"{name}_mask.png", value=255)
    return tmp_path


@pytest.fixture
def folder_root(tmp_path):
    _save(tmp_path / "good" / "b.png")
    _save(tmp_path / "good" / "a.JPG")
    _save(tmp_path / "dent" / "d1.png")
    _save(tmp_path / "dent" / "d2.bmp")
    _save(tmp_path / "stain" / "s1.tif")
    _save(tmp_path / "gt" / "dent" / "d1.png", value=255)  # <stem>.<ext>
    _save(tmp_path / "gt" / "stain" / "s1_mask.png", value=255)  # <stem>_mask
    (tmp_path / "good" / "notes.txt").write_text("not an image")
    _save(tmp_path / "stray.png")  # files directly in root are ignored
    _save(tmp_path / ".cache" / "x.png")  # hidden folders are ignored
    return tmp_path


def _magnetic_tree(root, n_free=7, defects=None):
    defects = {"Crack": 2, "Blowhole": 1} if defects is None else defects
    for folder, n in [("Free", n_free)] + list(defects.items()):
        for i in range(n):
            stem = root / f"MT_{folder}" / "Imgs" / f"exp_{folder}_{i:02d}"
            _save(stem.with_suffix(".jpg"), value=100)
            _save(stem.with_suffix(".png"), value=0 if folder == "Free" else 255)
    return root


# --------------------------------------------------------------------------
# load_mvtec
# --------------------------------------------------------------------------


@pytest.mark.parametrize("use_category", [True, False])
def test_load_mvtec_test_split(mvtec_root, use_category):
    if use_category:
        data = load_mvtec(mvtec_root, "tile")
    else:
        data = load_mvtec(mvtec_root / "tile")
    assert isinstance(data, Bunch)
    rel = [str(Path(p).relative_to(mvtec_root / "tile")) for p in data.images]
    assert rel == [
        "test/crack/000.png",
        "test/crack/001.png",
        "test/good/000.png",
        "test/oil/000.png",
    ]
    assert data.images == sorted(data.images)
    assert data.labels.tolist() == [1, 1, 0, 1]
    assert data.labels.dtype == np.int64
    assert data.defect_types.tolist() == ["crack", "crack", "good", "oil"]
    assert data.masks[2] is None
    for img, mask in zip(data.images, data.masks):
        if mask is not None:
            img, mask = Path(img), Path(mask)
            assert mask == mvtec_root / "tile" / "ground_truth" / img.parent.name / (
                img.stem + "_mask.png"
            )
    assert isinstance(data.root, str)


def test_load_mvtec_train_split(mvtec_root):
    data = load_mvtec(mvtec_root, "tile", split="train")
    assert [Path(p).name for p in data.images] == ["000.png", "001.png"]
    assert data.labels.tolist() == [0, 0]
    assert data.masks == [None, None]
    assert data.defect_types.tolist() == ["good", "good"]


def test_load_mvtec_reads_extensions_case_insensitively(mvtec_root):
    cat = mvtec_root / "tile"
    _save(cat / "test" / "good" / "001.PNG")
    _save(cat / "test" / "good" / "002.jpeg")
    (cat / "test" / "good" / "readme.txt").write_text("x")
    data = load_mvtec(cat)
    names = [Path(p).name for p in data.images if "good" in p]
    assert names == ["000.png", "001.PNG", "002.jpeg"]


def test_load_mvtec_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MVTec AD root folder .*nowhere"):
        load_mvtec(tmp_path / "nowhere")


def test_load_mvtec_unknown_category(mvtec_root):
    match = r"category folder .*bottle.*\['tile'\]"
    with pytest.raises(FileNotFoundError, match=match):
        load_mvtec(mvtec_root, "bottle")


def test_load_mvtec_root_holding_categories_needs_category(mvtec_root):
    with pytest.raises(FileNotFoundError, match=r"Expected folder .*test.*category="):
        load_mvtec(mvtec_root)


def test_load_mvtec_missing_split_folder(mvtec_root):
    import shutil

    shutil.rmtree(mvtec_root / "tile" / "train")
    with pytest.raises(FileNotFoundError, match=r"Expected folder .*train'"):
        load_mvtec(mvtec_root, "tile", split="train")


def test_load_mvtec_defect_folder_without_images(mvtec_root):
    (mvtec_root / "tile" / "test" / "hole").mkdir()
    with pytest.raises(ValueError, match=r"Folder .*hole' holds no images"):
        load_mvtec(mvtec_root, "tile")


def test_load_mvtec_split_folder_without_subfolders(tmp_path):
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match=r"holds no subfolders; expected 'good'"):
        load_mvtec(tmp_path)


def test_load_mvtec_defect_image_without_mask(mvtec_root):
    (mvtec_root / "tile" / "ground_truth" / "crack" / "001_mask.png").unlink()
    match = r"001\.png' has no mask: .*001_mask\.png"
    with pytest.raises(FileNotFoundError, match=match):
        load_mvtec(mvtec_root, "tile")


@pytest.mark.parametrize("split", ["val", None, "TEST"])
def test_load_mvtec_invalid_split(mvtec_root, split):
    with pytest.raises(ValueError, match=r"split must be 'train' or 'test'"):
        load_mvtec(mvtec_root, "tile", split=split)


# --------------------------------------------------------------------------
# load_folder
# --------------------------------------------------------------------------


def test_load_folder_with_masks(folder_root):
    data = load_folder(folder_root, mask_dir="gt")
    rel = [str(Path(p).relative_to(folder_root)) for p in data.images]
    assert rel == [
        "dent/d1.png",
        "dent/d2.bmp",
        "good/a.JPG",
        "good/b.png",
        "stain/s1.tif",
    ]
    assert data.labels.tolist() == [1, 1, 0, 0, 1]
    assert data.defect_types.tolist() == ["dent", "dent", "good", "good", "stain"]
    masks = [m and str(Path(m).relative_to(folder_root)) for m in data.masks]
    assert masks == ["gt/dent/d1.png", None, None, None, "gt/stain/s1_mask.png"]
    assert data.root == str(folder_root)


def test_load_folder_without_mask_dir_reads_every_folder_as_a_defect(folder_root):
    # Without mask_dir, "gt" is a defect folder, and it holds no images.
    with pytest.raises(ValueError, match=r"gt' holds no images"):
        load_folder(folder_root)
    _save(folder_root / "gt" / "g.png")
    data = load_folder(folder_root)
    assert data.masks == [None] * len(data.images)
    assert data.defect_types.tolist() == ["dent", "dent", "good", "good", "gt", "stain"]


def test_load_folder_custom_normal_dir(folder_root):
    (folder_root / "good").rename(folder_root / "ok")
    data = load_folder(folder_root, normal_dir="ok", mask_dir="gt")
    assert data.labels.tolist() == [1, 1, 0, 0, 1]
    assert data.defect_types.tolist() == ["dent", "dent", "good", "good", "stain"]


def test_load_folder_missing_root(tmp_path):
    match = r"root folder .*missing.* does not exist"
    with pytest.raises(FileNotFoundError, match=match):
        load_folder(tmp_path / "missing")


def test_load_folder_root_is_a_file(tmp_path):
    path = _save(tmp_path / "x.png")
    with pytest.raises(NotADirectoryError, match=r"x\.png' is not a folder"):
        load_folder(path)


def test_load_folder_missing_normal_dir(folder_root):
    with pytest.raises(
        FileNotFoundError, match=r"normal_dir='ok'.*holds the subfolders \['dent'"
    ):
        load_folder(folder_root, normal_dir="ok")


def test_load_folder_missing_mask_dir(folder_root):
    with pytest.raises(FileNotFoundError, match=r"mask_dir='masks'"):
        load_folder(folder_root, mask_dir="masks")


@pytest.mark.parametrize("empty", ["good", "scuff"])
def test_load_folder_folder_without_images(folder_root, empty):
    (folder_root / empty).mkdir(exist_ok=True)
    for p in (folder_root / empty).iterdir():
        p.unlink()
    match = rf"{empty}' holds no images; expected .*\.png"
    with pytest.raises(ValueError, match=match):
        load_folder(folder_root, mask_dir="gt")


def test_round_trip_generated_images_through_load_folder(tmp_path):
    X, y, masks = make_anomaly_images(3, 3, image_size=(32, 48), random_state=0)
    for sub in ["good", "defect", "masks/defect"]:
        (tmp_path / sub).mkdir(parents=True)
    for i, (img, label, mask) in enumerate(zip(X, y, masks)):
        sub = "defect" if label else "good"
        Image.fromarray(img).save(tmp_path / sub / f"{i}.png")
        if label:
            Image.fromarray(mask).save(tmp_path / "masks" / "defect" / f"{i}.png")
    data = load_folder(tmp_path, mask_dir="masks")
    order = [int(Path(p).stem) for p in data.images]
    np.testing.assert_array_equal(data.labels, y[order])
    read = read_masks(data)
    for k, i in enumerate(order):
        np.testing.assert_array_equal(read[k], masks[i])
        np.testing.assert_array_equal(np.asarray(Image.open(data.images[k])), X[i])


# --------------------------------------------------------------------------
# load_magnetic_tile
# --------------------------------------------------------------------------


def test_load_magnetic_tile_everything(tmp_path):
    data = load_magnetic_tile(_magnetic_tree(tmp_path))
    assert len(data.images) == 10
    assert all(p.endswith(".jpg") for p in data.images)
    assert data.images == sorted(data.images)
    assert int(data.labels.sum()) == 3
    assert sorted(set(data.defect_types)) == ["Blowhole", "Crack", "good"]
    rows = zip(data.images, data.labels, data.masks, data.defect_types)
    for img, label, mask, kind in rows:
        assert (kind == "good") == (label == 0)
        if label == 0:
            assert mask is None
        else:
            assert mask == img[: -len(".jpg")] + ".png"


@pytest.mark.parametrize("n_free, test_every", [(7, 5), (10, 2), (3, 5), (9, 3)])
def test_load_magnetic_tile_split_rule(tmp_path, n_free, test_every):
    root = _magnetic_tree(tmp_path, n_free=n_free)
    free = sorted(str(p) for p in (root / "MT_Free" / "Imgs").glob("*.jpg"))
    train = load_magnetic_tile(root, split="train", test_every=test_every)
    test = load_magnetic_tile(root, split="test", test_every=test_every)
    expected_train = [p for i, p in enumerate(free) if i % test_every != 0]
    assert train.images == expected_train
    assert train.labels.tolist() == [0] * len(expected_train)
    test_normal = [p for p, lab in zip(test.images, test.labels) if lab == 0]
    assert test_normal == [p for i, p in enumerate(free) if i % test_every == 0]
    assert int(test.labels.sum()) == 3
    assert not set(train.images) & set(test.images)
    everything = load_magnetic_tile(root, test_every=test_every)
    assert sorted(train.images + test.images) == everything.images


def test_load_magnetic_tile_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Magnetic Tile root folder .*nope"):
        load_magnetic_tile(tmp_path / "nope")


def test_load_magnetic_tile_not_the_layout(mvtec_root):
    with pytest.raises(FileNotFoundError, match=r"Expected folder .*MT_Free.*Imgs"):
        load_magnetic_tile(mvtec_root)


def test_load_magnetic_tile_defect_without_mask(tmp_path):
    root = _magnetic_tree(tmp_path)
    (root / "MT_Crack" / "Imgs" / "exp_Crack_01.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"exp_Crack_01\.jpg' has no mask"):
        load_magnetic_tile(root)
    # The training split does not list defective images, so it still loads.
    assert len(load_magnetic_tile(root, split="train").images) == 5


def test_load_magnetic_tile_defect_folder_without_imgs(tmp_path):
    root = _magnetic_tree(tmp_path)
    (root / "MT_Fray").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Expected folder .*MT_Fray.*Imgs"):
        load_magnetic_tile(root)


def test_load_magnetic_tile_folder_with_only_masks(tmp_path):
    root = _magnetic_tree(tmp_path, n_free=0, defects={"Crack": 1})
    _save(root / "MT_Free" / "Imgs" / "only_mask.png")
    with pytest.raises(ValueError, match=r"MT_Free.Imgs' holds no images, only \.png"):
        load_magnetic_tile(root)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "val"}, r"split must be None, 'train' or 'test', got 'val'"),
        ({"test_every": 1}, r"test_every must be an integer >= 2, got 1"),
        ({"test_every": 2.5}, r"test_every must be an integer >= 2, got 2\.5"),
        ({"test_every": True}, r"test_every must be an integer >= 2, got True"),
    ],
)
def test_load_magnetic_tile_invalid_arguments(tmp_path, kwargs, match):
    root = _magnetic_tree(tmp_path)
    with pytest.raises(ValueError, match=match):
        load_magnetic_tile(root, **kwargs)


# --------------------------------------------------------------------------
# read_masks
# --------------------------------------------------------------------------


def test_read_masks_binarizes_above_127(tmp_path):
    arr = np.array([[0, 127, 128], [255, 200, 1]], dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "m.png")
    rgb = np.stack([arr] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    gray, colour = read_masks([tmp_path / "m.png", str(tmp_path / "rgb.png")])
    expected = [[False, False, True], [True, True, False]]
    assert gray.dtype == bool
    assert gray.tolist() == expected
    assert colour.tolist() == expected


@pytest.mark.parametrize(
    "shapes", [(3, 5), [(3, 5), (3, 5)], np.array([[3, 5], [3, 5]])]
)
def test_read_masks_none_entries_take_shapes(tmp_path, shapes):
    _save(tmp_path / "m.png", size=(5, 3), value=255)
    masks = read_masks([None, tmp_path / "m.png"], shapes=shapes)
    assert [m.shape for m in masks] == [(3, 5), (3, 5)]
    assert [int(m.sum()) for m in masks] == [0, 15]


def test_read_masks_from_bunch_uses_image_shapes(mvtec_root):
    data = load_mvtec(mvtec_root, "tile")
    masks = read_masks(data)
    assert len(masks) == len(data.images)
    for mask, label in zip(masks, data.labels):
        assert mask.shape == (6, 8)
        assert mask.all() == bool(label)
        assert mask.any() == bool(label)


def test_read_masks_none_without_shape(tmp_path):
    with pytest.raises(ValueError, match=r"mask_paths\[1\] is None .*shapes="):
        read_masks([_save(tmp_path / "m.png"), None])


def test_read_masks_shape_mismatch(tmp_path):
    path = _save(tmp_path / "m.png", size=(8, 6))
    with pytest.raises(ValueError, match=r"has shape \(6, 8\), expected \(8, 6\)"):
        read_masks([path], shapes=(8, 6))


def test_read_masks_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone\.png' \(mask_paths\[0\]\)"):
        read_masks([tmp_path / "gone.png"])


def test_read_masks_invalid_shapes(tmp_path):
    match = r"shapes must be one \(height, width\) pair or 2"
    with pytest.raises(ValueError, match=match):
        read_masks([None, None], shapes=[(3, 5), (3, 5), (3, 5)])


# --------------------------------------------------------------------------
# Real data: the Magnetic Tile Defect data set
# --------------------------------------------------------------------------

N_GOOD, N_DEFECTIVE = 952, 392
DEFECT_COUNTS = {"Blowhole": 115, "Break": 85, "Crack": 57, "Fray": 32, "Uneven": 103}


@pytest.mark.realdata
def test_magnetic_tile_counts(magnetic_tile):
    data = load_magnetic_tile(magnetic_tile)
    assert int((data.labels == 0).sum()) == N_GOOD
    assert int((data.labels == 1).sum()) == N_DEFECTIVE
    kinds, counts = np.unique(data.defect_types[data.labels == 1], return_counts=True)
    assert dict(zip(kinds.tolist(), counts.tolist())) == DEFECT_COUNTS
    assert all(Path(p).is_file() for p in data.images[::50])
    assert sum(m is None for m in data.masks) == N_GOOD


@pytest.mark.realdata
def test_magnetic_tile_split_sizes(magnetic_tile):
    train = load_magnetic_tile(magnetic_tile, split="train")
    test = load_magnetic_tile(magnetic_tile, split="test")
    n_test_good = len(range(0, N_GOOD, 5))  # indices with i % 5 == 0: 191
    assert len(train.images) == N_GOOD - n_test_good == 761
    assert train.labels.sum() == 0
    assert len(test.images) == n_test_good + N_DEFECTIVE == 583
    assert int((test.labels == 0).sum()) == n_test_good
    assert not set(train.images) & set(test.images)


@pytest.mark.realdata
def test_magnetic_tile_masks_match_images(magnetic_tile):
    data = load_magnetic_tile(magnetic_tile)
    idx = [i for i in range(len(data.images)) if data.labels[i] == 1][::40]
    idx += [i for i in range(len(data.images)) if data.labels[i] == 0][:3]
    subset = Bunch(
        images=[data.images[i] for i in idx], masks=[data.masks[i] for i in idx]
    )
    masks = read_masks(subset)
    for i, mask in zip(idx, masks):
        with Image.open(data.images[i]) as im:
            assert mask.shape == (im.height, im.width)
        assert mask.any() == bool(data.labels[i])
