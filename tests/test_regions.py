"""Defect masks and regions: the labelling against scipy, regions against a slow reference,
consistency with predict, sizes, settings, files, and the per-file scoring loop."""

import copy
import pickle

import numpy as np
import pytest
from scipy import ndimage

from conftest import SMALL, textured
from skpadim import PadimDetector, Region
from skpadim import _regions

EIGHT = np.ones((3, 3), bool)


def smooth_field(rng, shape, sigma=2.0):
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma)


# ------------------------------------------------------------------ labelling and regions


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (23, 1), (31, 40), (64, 64)])
def test_label_equals_scipy_numbering_included(shape):
    rng = np.random.default_rng(sum(shape))
    cases = [np.zeros(shape, bool), np.ones(shape, bool)]
    for p in (0.05, 0.3, 0.5, 0.7):
        cases.append(rng.random(shape) < p)  # specks, diagonals, holes
    for level in (0.0, 0.05, 0.1):
        cases.append(smooth_field(rng, shape) > level)  # blobs, as masks of smooth maps are
    checker = (np.indices(shape).sum(0) % 2).astype(bool)  # corner-touching only: one region
    cases.append(checker)
    for mask in cases:
        ours, n = _regions.label(mask)
        ref, m = ndimage.label(mask, structure=EIGHT)
        assert n == m
        np.testing.assert_array_equal(ours, ref)
        assert ours.dtype == np.int32


def slow_regions(amap, mask, min_region_area=0):
    """Regions written out from scipy's labels, pixel by pixel."""
    labels, n = ndimage.label(mask, structure=EIGHT)
    found = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        values = [float(amap[y, x]) for y, x in zip(ys, xs)]
        found.append(Region((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), len(ys),
                            (float(np.mean(xs)), float(np.mean(ys))), max(values), sum(values) / len(values)))
    found.sort(key=lambda r: (-r.area, -r.peak, r.box[1], r.box[0]))
    return [r for i, r in enumerate(found) if i == 0 or r.area >= min_region_area]


@pytest.mark.parametrize("min_region_area", [0, 1, 5, 40])
def test_regions_equal_a_slow_reference(min_region_area):
    rng = np.random.default_rng(min_region_area)
    for trial in range(6):
        amap = smooth_field(rng, (37, 45), 1.5).astype(np.float32)
        mask = amap > np.quantile(amap, 0.8 + 0.03 * trial)
        got = _regions.defect_regions(amap, mask, min_region_area)
        ref = slow_regions(amap, mask, min_region_area)
        assert [(r.box, r.area) for r in got] == [(r.box, r.area) for r in ref]
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g.centroid, r.centroid, rtol=1e-12)
            assert g.peak == r.peak and g.mean == pytest.approx(r.mean, rel=1e-12)
        assert all(isinstance(v, int) for r in got for v in (*r.box, r.area))
        if got:  # never the largest dropped
            assert got[0].area == max(r.area for r in slow_regions(amap, mask))


def test_localize_follows_the_image_decision_and_min_region_area():
    amap = np.zeros((20, 30), np.float32)
    amap[2:8, 3:10] = 5.0  # 42 pixels
    amap[15, 25] = 4.0  # a speck
    amap[4, 4] = 6.0  # the peak
    keep_all = _regions.Settings(offset=-3.0, pixel_threshold=1.0)
    # score_samples -6 < offset -3: flagged
    mask, regions = _regions.localize(amap, -6.0, keep_all)
    assert [r.area for r in regions] == [42, 1] and mask.sum() == 43
    assert regions[0].peak == 6.0 and regions[0].box == (3, 2, 10, 8)
    # not flagged (score -2 >= offset -3): nothing, whatever the map
    mask, regions = _regions.localize(amap, -2.0, keep_all)
    assert not mask.any() and regions == []
    # min_region_area drops the speck from the regions and from the mask
    mask, regions = _regions.localize(amap, -6.0, keep_all._replace(min_region_area=2))
    assert [r.area for r in regions] == [42] and mask.sum() == 42 and not mask[15, 25]
    # ... but never the largest region of a flagged image
    mask, regions = _regions.localize(amap, -6.0, keep_all._replace(min_region_area=10_000))
    assert [r.area for r in regions] == [42] and mask.sum() == 42
    # flagged but no pixel above the pixel threshold: its peak
    mask, regions = _regions.localize(amap, -6.0, keep_all._replace(pixel_threshold=100.0))
    assert mask.sum() >= 1 and mask[4, 4] and len(regions) >= 1


def test_outline_summary_and_mask_files(tmp_path):
    from skpadim.datasets import read_masks

    mask = np.zeros((9, 10), bool)
    mask[2:7, 3:9] = True
    mask[0, 0] = True
    edge = _regions.outline(mask)
    assert edge[0, 0] and edge[2, 3] and edge[6, 8] and not edge[4, 5]
    assert edge.sum() == 1 + (5 * 6 - 3 * 4)
    regions = _regions.defect_regions(mask.astype(np.float32), mask)
    assert _regions.summary(regions) == {"n_regions": 2, "largest_area": 30, "largest_box": (3, 2, 9, 7)}
    assert _regions.summary([]) == {"n_regions": 0, "largest_area": 0, "largest_box": None}
    assert regions[1].to_dict() == {"box": [0, 0, 1, 1], "area": 1, "centroid": [0.0, 0.0], "peak": 1.0,
                                    "mean": 1.0}
    path = tmp_path / "mask.png"
    _regions.save_mask(path, mask)
    np.testing.assert_array_equal(read_masks([str(path)])[0], mask)
    assert not list(tmp_path.glob(".*"))  # no temporary left
    with pytest.raises(ValueError, match="2-D boolean"):
        _regions.save_mask(tmp_path / "bad.png", mask.astype(np.uint8))
    assert not (tmp_path / "bad.png").exists()


# ------------------------------------------------------------------ the estimator


def defective(n, size=32, seed=3):
    X = textured(n, size=size, seed=seed)
    for i, x in enumerate(X):
        y0, x0 = 4 + (3 * i) % (size - 14), 6 + (5 * i) % (size - 14)
        x[y0:y0 + 6, x0:x0 + 8] = 255
    return X


@pytest.fixture(scope="module")
def det(fitted):
    return copy.deepcopy(fitted)  # conftest's, 32 px; this module moves its thresholds


@pytest.fixture(scope="module")
def X():
    return np.concatenate([textured(6, seed=9), defective(6)])


def assert_same_regions(got, expected, rtol=1e-5):
    """The same regions, their map values to float32 round-off (other batches, other sums)."""
    assert [[(r.box, r.area) for r in rs] for rs in got] == [[(r.box, r.area) for r in rs] for rs in expected]
    for gs, es in zip(got, expected):
        for g, e in zip(gs, es):
            assert g.centroid == e.centroid
            assert g.peak == pytest.approx(e.peak, rel=rtol) and g.mean == pytest.approx(e.mean, rel=rtol)


def check_consistent(det, X, masks, regions):
    flagged = det.predict(X) == -1
    assert len(masks) == len(regions) == len(X)
    for f, m, r in zip(flagged, masks, regions):
        assert m.dtype == bool
        assert bool(m.any()) == bool(f) == (len(r) > 0)
        assert sum(x.area for x in r) == m.sum()  # the mask is the union of the regions
        assert [x.area for x in r] == sorted((x.area for x in r), reverse=True)
        for x in r:
            x0, y0, x1, y1 = x.box
            assert m[y0:y1, x0:x1].sum() >= x.area


def test_masks_and_regions_follow_predict(det, X):
    flagged = det.predict(X) == -1
    assert flagged[6:].all() and not flagged[:6].all()  # defects flagged, not every good image
    masks, regions = det.anomaly_mask(X), det.defect_regions(X)
    assert masks.shape == (12, 32, 32)
    check_consistent(det, X, masks, regions)
    maps = det.anomaly_map(X)
    for i in np.flatnonzero(flagged):  # the pixel at the map's maximum is always part of it
        assert masks[i][np.unravel_index(np.argmax(maps[i]), maps[i].shape)]
    # every image flagged, and a pixel threshold above every map: still one region per image
    offset, pixel = det.offset_, det.pixel_threshold_
    try:
        det.offset_ = 0.0
        det.pixel_threshold_ = 1e9
        masks, regions = det.anomaly_mask(X), det.defect_regions(X)
        assert all(len(r) >= 1 for r in regions)
        check_consistent(det, X, masks, regions)
        det.offset_ = -1e9  # nothing flagged
        assert not det.anomaly_mask(X).any() and det.defect_regions(X) == [[]] * 12
    finally:
        det.offset_, det.pixel_threshold_ = offset, pixel


def test_min_region_area_is_a_prediction_setting(det, X):
    regions = det.defect_regions(X)
    biggest = max(r[0].area for r in regions if r)
    try:
        det.set_params(min_region_area=biggest + 1)
        few = det.defect_regions(X)
        assert [len(r) for r in few] == [min(len(r), 1) for r in regions]  # the largest stays
        assert [r[:1] for r in few] == [r[:1] for r in regions]
        masks = det.anomaly_mask(X)
        assert [int(m.sum()) for m in masks] == [r[0].area if r else 0 for r in few]
        det.set_params(min_region_area=-1)
        with pytest.raises(ValueError, match="'min_region_area' parameter of PadimDetector must be an int"):
            det.defect_regions(X)
        with pytest.raises(ValueError, match="min_region_area"):
            det.anomaly_mask(X)
    finally:
        det.set_params(min_region_area=0)


def test_masks_at_each_images_size(det, X):
    items = [X[7], X[8][:20, :29], np.ascontiguousarray(X[9][::2]), X[1]]
    masks = det.anomaly_mask(items)
    assert isinstance(masks, list) and [m.shape for m in masks] == [im.shape[:2] for im in items]
    regions = det.defect_regions(items)
    for m, r, im in zip(masks, regions, items):
        for x in r:
            assert 0 <= x.box[0] < x.box[2] <= im.shape[1] and 0 <= x.box[1] < x.box[3] <= im.shape[0]
    check_consistent(det, items, masks, regions)


def test_tiles_at_native_size_give_masks_at_native_size():
    X = textured(16, size=40, seed=4)
    det = PadimDetector(**{**SMALL, "image_size": None, "tile_size": 16, "n_features": 10}).fit(X)
    items = [defective(1, size=40)[0], defective(1, size=56, seed=5)[0][:, :48]]  # shared tiles: any size
    masks, regions = det.anomaly_mask(items), det.defect_regions(items)
    assert [m.shape for m in masks] == [(40, 40), (56, 48)]
    check_consistent(det, items, masks, regions)


def test_pixel_threshold_is_checked_and_kept_by_save_load_and_pickle(det, X, tmp_path):
    with pytest.raises(ValueError, match="pixel_threshold_ must be a finite float"):
        det.pixel_threshold_ = float("nan")
    with pytest.raises(ValueError, match="pixel_threshold_ must be a finite float"):
        det.pixel_threshold_ = True
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PadimDetector().anomaly_mask(X)
    with pytest.raises(NotFittedError):
        PadimDetector().defect_regions(X)
    fitted_value = det.pixel_threshold_
    try:
        det.pixel_threshold_ = fitted_value * 0.75
        det.set_params(min_region_area=3)
        det.save(tmp_path / "m.skpadim")
        for other in (PadimDetector.load(tmp_path / "m.skpadim"), pickle.loads(pickle.dumps(det))):
            assert other.pixel_threshold_ == det.pixel_threshold_ and other.min_region_area == 3
            np.testing.assert_array_equal(other.anomaly_mask(X[6:]), det.anomaly_mask(X[6:]))
    finally:
        det.pixel_threshold_ = fitted_value
        det.set_params(min_region_area=0)


def test_score_images_gives_the_detectors_regions_and_masks(det, X, tmp_path):
    from PIL import Image

    from skpadim._batch import score_images

    paths = []
    for i, x in enumerate(X[4:9]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(x).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    items = paths[:2] + [str(tmp_path / "bad.png")] + paths[2:]
    results = list(score_images(det, items, with_regions=True, with_masks=True, chunk_size=2))
    ok = [r for r in results if r.error is None]
    assert len(ok) == 5 and results[2].error is not None and results[2].regions is None
    assert_same_regions([r.regions for r in ok], det.defect_regions(paths))
    for r, m in zip(ok, det.anomaly_mask(paths)):
        np.testing.assert_array_equal(r.mask, m)
        assert r.map is None
    plain = list(score_images(det, paths))
    assert all(r.regions is None and r.mask is None for r in plain)
