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
    keep_all = _regions.Settings(offset=-3.0, pixel_threshold=1.0, anchor=3.0)
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


# ------------------------------------------------------------------ the rule


def slow_mask(amap, score, offset, pixel_threshold, anchor):
    """The rule written out with scipy: the regions of map > level that reach a seed."""
    if not score < offset:
        return np.zeros(amap.shape, bool)
    t = -offset
    level = amap.dtype.type(max(pixel_threshold, float(np.median(amap)) + 0.75 * (float(amap.max()) - anchor)))
    labels, n = ndimage.label(amap > level, structure=EIGHT)
    if n == 0:
        return amap == amap.max()
    seeds = amap > amap.dtype.type(t)
    if not seeds.any():
        seeds = amap == amap.max()
    keep = {int(v) for v in labels[seeds]} - {0}
    return np.isin(labels, sorted(keep))


def random_maps(rng, n, shape=(24, 30)):
    """Smooth maps with a bump or two, as anomaly maps of flagged and normal images look."""
    out = []
    for _ in range(n):
        m = 3 + smooth_field(rng, shape, 2.0) * 4
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            yy, xx = np.mgrid[:shape[0], :shape[1]]
            m += rng.uniform(2, 8) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * rng.uniform(1, 4) ** 2))
        out.append(m.astype(np.float32))
    return out


def test_rule_equals_a_slow_reference_and_its_levels():
    rng = np.random.default_rng(0)
    maps = random_maps(rng, 40)
    for i, m in enumerate(maps):
        peak = float(m.max())
        for offset, anchor in ((-peak * 0.6, peak * 0.6), (-peak * 0.95, peak * 0.8), (-peak * 1.01, peak * 1.2),
                               (-float(np.median(m)), peak * 0.5)):
            score = -peak
            settings = _regions.Settings(offset, 0.0, anchor)
            lv = _regions.levels(m, score, settings)
            assert lv.flagged == (score < offset)
            for p in (-1e9, 0.0, float(np.quantile(m, 0.5)), float(np.quantile(m, 0.9)), float(np.quantile(m, 0.99)),
                      peak, peak + 1, float(m.ravel()[rng.integers(m.size)])):
                mask = _regions.anomaly_mask(m, score, settings._replace(pixel_threshold=p))
                np.testing.assert_array_equal(mask, slow_mask(m, score, offset, p, anchor))
                from_levels = (lv.levels > m.dtype.type(p)) if p < lv.switch else lv.fallback
                np.testing.assert_array_equal(mask, from_levels if lv.flagged else np.zeros(m.shape, bool))
                assert mask.any() == lv.flagged  # flagged: at least one pixel; normal: none


def test_a_region_must_reach_the_image_threshold():
    amap = np.zeros((30, 30), np.float32)
    amap[2:6, 2:6] = 5.0
    amap[3, 3] = 9.0
    amap[15:20, 15:20] = 4.0  # above the pixel threshold, but never above the image threshold
    mask = _regions.anomaly_mask(amap, -9.0, _regions.Settings(-6.0, 3.0, 6.0))
    assert mask[2:6, 2:6].all() and not mask[15:20, 15:20].any()
    # a map resized below the image threshold: the regions reach its maximum instead
    mask = _regions.anomaly_mask(amap, -10.0, _regions.Settings(-9.5, 3.0, 6.0))
    assert mask[2:6, 2:6].all() and not mask[15:20, 15:20].any()


def test_calibrate_pixel_threshold_against_a_brute_force_search(det, X):
    from skpadim.metrics import calibrate_pixel_threshold, pixel_f1_score
    from skpadim.metrics._scorers import best_pixel_threshold

    rng = np.random.default_rng(1)
    maps = random_maps(rng, 6, (12, 16))
    scores = np.array([-float(m.max()) for m in maps])
    offset = float(np.median(scores))  # half of them flagged
    settings = _regions.Settings(offset, 0.0, -offset * 1.1)
    true = [m > np.quantile(m, 0.85) + rng.normal(0, 0.3, m.shape) for m in maps]
    threshold, f1 = best_pixel_threshold(maps, scores, true, settings)

    def f1_at(p):  # the masks the detector would output at pixel threshold p, counted by hand
        tp = fp = 0
        for m, s, t in zip(maps, scores, true):
            pred = _regions.anomaly_mask(m, s, settings._replace(pixel_threshold=p))
            tp, fp = tp + np.count_nonzero(pred & t), fp + np.count_nonzero(pred & ~t)
        return 2 * tp / (tp + fp + sum(np.count_nonzero(t) for t in true))

    values = np.unique(np.concatenate([m.ravel() for m in maps]))
    brute = max(f1_at(float(p)) for p in np.concatenate([[values[0] - 1], values]))
    assert f1 == pytest.approx(brute, abs=1e-12) and f1_at(threshold) == pytest.approx(f1, abs=1e-12)
    # on a detector: its masks reach the best F1, nothing else moves
    masks = [np.zeros((32, 32), bool)] * 6 + [m > 0 for m in defective(6)[..., 0] - textured(6, seed=3)[..., 0]]
    before = (det.offset_, det.pixel_threshold_)
    try:
        assert calibrate_pixel_threshold(det, X, masks) is det
        maps, scores = det.anomaly_map(X, return_scores=True)
        assert det.offset_ == before[0]
        assert pixel_f1_score(masks, det.anomaly_mask(X)) == pytest.approx(
            best_pixel_threshold(maps, scores, masks, _regions.settings_of(det))[1])
    finally:
        det.offset_, det.pixel_threshold_ = before


def test_calibrate_pixel_threshold_refuses_bad_masks_and_changes_nothing(det, X):
    from skpadim.metrics import calibrate_pixel_threshold

    good = np.zeros((12, 32, 32), bool)
    good[6:, 10:15, 10:15] = True
    before = det.pixel_threshold_
    with pytest.raises(ValueError, match="masks holds 11 masks but X holds 12 images"):
        calibrate_pixel_threshold(det, X, good[:11])
    with pytest.raises(ValueError, match=r"masks\[3\] has shape \(32, 31\) but image 3 of X is 32 x 32"):
        calibrate_pixel_threshold(det, X, [m[:, :31] if i == 3 else m for i, m in enumerate(good)])
    with pytest.raises(ValueError, match=r"masks\[6\] must be boolean or hold only 0"):
        calibrate_pixel_threshold(det, X, good * 2)
    with pytest.raises(ValueError, match="every mask is empty"):
        calibrate_pixel_threshold(det, X, np.zeros_like(good))
    with pytest.raises(ValueError, match="3-D array"):
        calibrate_pixel_threshold(det, X, good[0])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        calibrate_pixel_threshold(PadimDetector(), X, good)
    assert det.pixel_threshold_ == before


def test_a_state_saved_without_pixel_threshold_gets_the_fitted_rule(det):
    from skpadim._engine.state import FittedState  # what load and unpickling read

    arrays, meta = det._state.to_arrays()
    assert meta["fitted"].pop("pixel_threshold") == det.pixel_threshold_
    old = FittedState.from_arrays(arrays, meta, device="cpu")
    assert old.pixel_threshold == pytest.approx(det.pixel_threshold_)  # image_score='max': the same
