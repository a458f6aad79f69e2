"""Tests for skpadim.metrics: exact paths against scikit-learn and brute force,
binned paths against the exact values, AUPRO against a slow reference."""

import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.exceptions import NotFittedError, UndefinedMetricWarning
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    StratifiedKFold,
    cross_val_score,
)

from skpadim.metrics import _pixel_passes
from skpadim.metrics import (
    aupro,
    calibrate_threshold,
    f1_max,
    f1_max_scorer,
    get_scorer,
    image_auroc,
    image_auroc_scorer,
    image_average_precision,
    image_average_precision_scorer,
    optimal_threshold,
    pixel_auroc,
    pixel_average_precision,
    pixel_f1_max,
    pixel_optimal_threshold,
)

IMAGE_METRICS = [image_auroc, image_average_precision, f1_max, optimal_threshold]
PIXEL_METRICS = [
    pixel_auroc,
    pixel_average_precision,
    pixel_f1_max,
    pixel_optimal_threshold,
    aupro,
]


# --------------------------------------------------------------------------
# Data and reference implementations
# --------------------------------------------------------------------------
def _image_data(seed, n=40, ties=False):
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=int)
    y[rng.choice(n, size=n // 4, replace=False)] = 1
    scores = rng.normal(size=n) + 1.2 * y
    if ties:
        scores = np.round(scores, 1)
    return y, scores


def _pixel_data(seed, shapes=((12, 16), (9, 9), (16, 12), (10, 14)), ties=False):
    """Masks of random blobs (some images normal) and noisy maps."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i, shape in enumerate(shapes):
        mask = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.25
        if i == 0:
            mask[:] = False  # a normal image
        amap = rng.normal(size=shape) + 1.5 * mask
        masks.append(mask)
        maps.append(np.round(amap, 1) if ties else amap)
    return masks, maps


def _flat(masks, maps):
    return (
        np.concatenate([np.ravel(m) for m in masks]).astype(bool),
        np.concatenate([np.ravel(a) for a in maps]),
    )


def _brute_f1(y, scores):
    """Best F1 and every threshold reaching it, by trying each distinct score."""
    values = np.unique(scores)
    f1s = np.array([f1_score(y, scores >= t) for t in values])
    return f1s.max(), values[np.isclose(f1s, f1s.max(), rtol=0, atol=1e-12)]


def _reference_aupro(masks, maps, fpr_limit):
    """Slow, obviously-correct AUPRO: one full evaluation per distinct score."""
    regions = []
    for mask, amap in zip(masks, maps):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labels == r] for r in range(1, n + 1)]
    normal = np.concatenate([a[~m.astype(bool)] for m, a in zip(masks, maps)])
    fprs, pros = [0.0], [0.0]
    for t in np.unique(np.concatenate([np.ravel(a) for a in maps]))[::-1]:
        fprs.append(np.mean(normal >= t))
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    xs, ys = [fprs[0]], [pros[0]]
    for x0, y0, x1, y1 in zip(fprs, pros, fprs[1:], pros[1:]):
        if x1 <= fpr_limit:
            xs.append(x1)
            ys.append(y1)
        else:
            xs.append(fpr_limit)
            ys.append(y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))
            break
    return np.trapezoid(ys, xs) / fpr_limit


# --------------------------------------------------------------------------
# Image level
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("outlier_convention", [False, True])
def test_image_metrics_match_sklearn(seed, ties, outlier_convention):
    y, scores = _image_data(seed, ties=ties)
    labels = np.where(y == 1, -1, 1) if outlier_convention else y
    assert image_auroc(labels, scores) == pytest.approx(
        roc_auc_score(y, scores), rel=1e-12
    )
    assert image_average_precision(labels, scores) == pytest.approx(
        average_precision_score(y, scores), rel=1e-12
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_f1_max_and_optimal_threshold_match_brute_force(seed, ties):
    y, scores = _image_data(seed, ties=ties)
    best, thresholds = _brute_f1(y, scores)
    assert f1_max(y, scores) == pytest.approx(best, rel=1e-12)
    t = optimal_threshold(y, scores)
    assert isinstance(t, float)
    assert t == thresholds.max()  # the highest of the optimal thresholds
    assert f1_score(y, scores >= t) == pytest.approx(best, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=25
    ).filter(lambda pairs: len({label for label, _ in pairs}) == 2)
)
def test_image_metrics_property_based(pairs):
    y = np.array([label for label, _ in pairs], dtype=int)
    scores = np.array([score for _, score in pairs], dtype=float) / 3
    assert image_auroc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    assert image_average_precision(y, scores) == pytest.approx(
        average_precision_score(y, scores)
    )
    best, thresholds = _brute_f1(y, scores)
    assert f1_max(y, scores) == pytest.approx(best)
    assert optimal_threshold(y, scores) == thresholds.max()


def test_image_metrics_known_values():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert image_auroc(y, s) == 0.75
    assert image_auroc([1, 0], [0.0, 1.0]) == 0.0
    assert image_auroc([0, 1], [1.0, 1.0]) == 0.5
    assert f1_max(y, s) == pytest.approx(0.8)
    assert optimal_threshold(y, s) == 0.35


@pytest.mark.parametrize("metric", IMAGE_METRICS)
@pytest.mark.parametrize(
    "y, scores, match",
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "needs both anomalous and normal images"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "3 anomalous and 0 normal"),
        ([-1, -1], [0.1, 0.2], "2 anomalous and 0 normal"),
        ([0, 1, 1], [0.1, 0.2], "same length, got 3 labels and 2 scores"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "1 NaN or infinite.*index 1"),
        ([0, 1, 1], [0.1, 0.2, np.inf], "NaN or infinite"),
        ([0, 1], [[0.1], [0.2]], "1-D array"),
        ([0, 1], ["a", "b"], "real anomaly scores"),
        ([0, 2], [0.1, 0.2], "unknown labels"),
    ],
)
def test_image_metric_errors(metric, y, scores, match):
    with pytest.raises(ValueError, match=match):
        metric(y, scores)


# --------------------------------------------------------------------------
# Pixel level: AUROC, AP, F1
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ties", [False, True])
def test_pixel_exact_path_matches_sklearn(seed, ties):
    masks, maps = _pixel_data(seed, ties=ties)
    y, s = _flat(masks, maps)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), rel=1e-12)
    assert pixel_average_precision(masks, maps) == pytest.approx(
        average_precision_score(y, s), rel=1e-12
    )


def test_pixel_metrics_accept_3d_arrays_and_int_masks():
    masks, maps = _pixel_data(0, shapes=[(8, 8)] * 5)
    as_list = pixel_auroc(masks, maps)
    assert pixel_auroc(np.stack(masks).astype(np.uint8), np.stack(maps)) == as_list
    assert pixel_auroc(tuple(masks), np.stack(maps).astype(np.float32)) == (
        pytest.approx(as_list, abs=1e-6)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_binned_path_close_to_sklearn(seed):
    masks, maps = _pixel_data(seed, shapes=[(40, 50)] * 6)
    y, s = _flat(masks, maps)
    assert pixel_auroc(masks, maps, n_bins=2**16) == pytest.approx(
        roc_auc_score(y, s), abs=1e-4
    )
    assert pixel_average_precision(masks, maps, n_bins=2**16) == pytest.approx(
        average_precision_score(y, s), abs=1e-3
    )
    exact_f1 = pixel_f1_max(masks, maps)
    binned_f1 = pixel_f1_max(masks, maps, n_bins=2**16)
    assert exact_f1 - 1e-3 <= binned_f1 <= exact_f1 + 1e-12


@pytest.mark.parametrize("n_bins", [8, 64, 1024])
def test_binning_error_within_documented_bounds(n_bins):
    masks, maps = _pixel_data(5, shapes=[(30, 30)] * 4)
    scan = _pixel_passes.scan(masks, maps)
    tally, _ = _pixel_passes.pixel_tally(masks, maps, scan, n_bins)
    p, n = tally.pos / scan.n_pos, tally.neg / scan.n_neg
    binned = pixel_auroc(masks, maps, n_bins=n_bins)
    assert abs(binned - pixel_auroc(masks, maps)) <= np.sum(p * n) / 2 + 1e-12
    for fpr_limit in [0.05, 0.3]:
        pro_error = abs(
            aupro(masks, maps, fpr_limit, n_bins=n_bins) - aupro(masks, maps, fpr_limit)
        )
        assert pro_error <= n.max() / fpr_limit + 1e-12


def test_pixel_binned_path_is_exact_when_values_sit_on_edges():
    # Integer maps 0..9 with 18 bins of width 1/2: each value is the lower
    # edge of its own bin, so the binned curves are the exact ones.
    rng = np.random.default_rng(0)
    masks = rng.random((6, 10, 10)) < 0.3
    maps = rng.integers(0, 10, size=(6, 10, 10)) + 3 * masks
    maps = np.clip(maps, 0, 9).astype(np.float64)
    for metric in [pixel_auroc, pixel_average_precision, pixel_f1_max]:
        assert metric(masks, maps, n_bins=18) == pytest.approx(
            metric(masks, maps), rel=1e-12
        )
    assert pixel_optimal_threshold(masks, maps, n_bins=18) == (
        pixel_optimal_threshold(masks, maps)
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_f1_and_threshold_match_brute_force(seed):
    masks, maps = _pixel_data(seed, ties=True)
    y, s = _flat(masks, maps)
    best, thresholds = _brute_f1(y, s)
    assert pixel_f1_max(masks, maps) == pytest.approx(best, rel=1e-12)
    assert pixel_optimal_threshold(masks, maps) == thresholds.max()


@pytest.mark.parametrize("n_bins", [7, 64, 2**12])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binned_threshold_flags_exactly_the_counted_pixels(n_bins, dtype):
    masks, maps = _pixel_data(3)
    maps = [a.astype(dtype) for a in maps]
    y, s = _flat(masks, maps)
    t = pixel_optimal_threshold(masks, maps, n_bins=n_bins)
    assert t in s  # a pixel value, so `maps >= t` is exact in any dtype
    flagged = np.concatenate([(a >= t).ravel() for a in maps])
    assert f1_score(y, flagged) == pytest.approx(
        pixel_f1_max(masks, maps, n_bins=n_bins), rel=1e-12
    )


def test_auto_mode_bins_large_data_sets(monkeypatch):
    masks, maps = _pixel_data(4)
    exact = pixel_auroc(masks, maps)
    monkeypatch.setattr(_pixel_passes, "EXACT_MAX_PIXELS", 100)
    monkeypatch.setattr(_pixel_passes, "DEFAULT_N_BINS", 2**10)
    auto = pixel_auroc(masks, maps)
    assert auto == pixel_auroc(masks, maps, n_bins=2**10)
    assert auto != exact
    assert auto == pytest.approx(exact, abs=1e-3)


def test_constant_maps_give_chance_level():
    masks, _ = _pixel_data(0)
    maps = [np.full(m.shape, 2.5) for m in masks]
    for n_bins in [None, 16]:
        assert pixel_auroc(masks, maps, n_bins=n_bins) == 0.5
        assert pixel_optimal_threshold(masks, maps, n_bins=n_bins) == 2.5


class _LazyMaps:
    """A sequence that builds each (mask or map) image on access."""

    def __init__(self, n, shape, kind):
        self.n, self.shape, self.kind = n, shape, kind

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        mask = np.zeros(self.shape, dtype=bool)
        if i % 2:
            mask[10:60, 20:90] = True
        if self.kind == "mask":
            return mask
        return rng.random(self.shape) + mask


def test_large_inputs_are_streamed_in_bounded_memory():
    n, shape = 44, (512, 512)  # 11.5 M pixels: 92 MB of float64 maps
    masks, maps = _LazyMaps(n, shape, "mask"), _LazyMaps(n, shape, "map")
    tracemalloc.start()
    try:
        auroc = pixel_auroc(masks, maps)
        pro = aupro(masks, maps)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40e6
    assert 0.9 < auroc <= 1.0
    assert 0.5 < pro <= 1.0


# --------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_exact_path_matches_reference(seed, ties, fpr_limit):
    masks, maps = _pixel_data(seed, ties=ties)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(
        _reference_aupro(masks, maps, fpr_limit), rel=1e-10, abs=1e-12
    )


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("fpr_limit", [0.1, 0.3])
def test_aupro_binned_path_close_to_reference(seed, fpr_limit):
    masks, maps = _pixel_data(seed, shapes=[(30, 30)] * 4)
    assert aupro(masks, maps, fpr_limit, n_bins=2**14) == pytest.approx(
        _reference_aupro(masks, maps, fpr_limit), abs=1e-3
    )


@pytest.mark.parametrize("n_bins", [None, 2, 256])
@pytest.mark.parametrize("fpr_limit", [0.1, 0.3, 1.0])
def test_aupro_known_values(n_bins, fpr_limit):
    masks, _ = _pixel_data(1)
    perfect = [m.astype(float) for m in masks]
    constant = [np.full(m.shape, 7.0) for m in masks]
    inverted = [1.0 - m for m in masks]
    assert aupro(masks, perfect, fpr_limit, n_bins=n_bins) == pytest.approx(1.0)
    assert aupro(masks, constant, fpr_limit, n_bins=n_bins) == pytest.approx(
        fpr_limit / 2
    )
    assert aupro(masks, inverted, fpr_limit, n_bins=n_bins) == pytest.approx(0.0)


def test_aupro_regions_are_8_connected():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1, 1] = mask[2, 1] = mask[2, 2] = True  # an L of 3 pixels
    mask[3, 3] = True  # touches the L by a corner only
    amap = np.zeros((6, 6))
    amap[3, 3] = 1.0  # only the corner pixel is detected
    # One region of 4 pixels: PRO = 1/4 at FPR = 0, then a line to (1, 1).
    expected = 0.3 * (0.25 + (0.25 + 0.75 * 0.3)) / 2 / 0.3
    assert aupro([mask], [amap]) == pytest.approx(expected)  # 0.3625


def test_aupro_weighs_regions_equally():
    mask = np.zeros((20, 20), dtype=bool)
    mask[0:3, 0:3] = True  # 9 pixels, detected
    mask[10, 10] = True  # 1 pixel, missed
    amap = mask * 1.0
    amap[10, 10] = 0.0
    # PRO = 1/2 (not 9/10) at FPR = 0, then a line to (1, 1).
    expected = (0.5 + (0.5 + 0.5 * 0.3)) / 2
    assert aupro([mask], [amap], n_bins=None) == pytest.approx(expected)
    assert aupro([mask], [amap], n_bins=100) == pytest.approx(expected)


# --------------------------------------------------------------------------
# Pixel-level errors
# --------------------------------------------------------------------------
def _pair(shape=(4, 4)):
    mask = np.zeros(shape, dtype=bool)
    mask[0, 0] = True
    return mask, np.linspace(0, 1, mask.size).reshape(shape)


@pytest.mark.parametrize("metric", PIXEL_METRICS)
@pytest.mark.parametrize(
    "masks, maps, error, match",
    [
        ([np.zeros((4, 4), bool)], [_pair()[1]], ValueError, "0 anomalous and 16"),
        ([np.ones((4, 4), bool)], [_pair()[1]], ValueError, "16 anomalous and 0"),
        ([_pair()[0]], [_pair((4, 5))[1]], ValueError, r"masks\[0\] has shape"),
        ([_pair()[0] * 2], [_pair()[1]], ValueError, "found the value 2"),
        ([_pair()[0].astype(str)], [_pair()[1]], ValueError, "dtype <U"),
        ([_pair()[0]], [_pair()[1] * np.nan], ValueError, "16 NaN or infinite"),
        ([_pair()[0]], [_pair()[1].astype(str)], ValueError, "real anomaly scores"),
        ([_pair()[0]], [np.zeros(16)], ValueError, r"maps\[0\] must be a 2-D"),
        ([_pair()[0]] * 2, [_pair()[1]], ValueError, "2 masks and 1 maps"),
        ([], [], ValueError, "empty"),
        (_pair()[0], _pair()[1], ValueError, "must be a 3-D array"),
        ((m for m in [_pair()[0]]), [_pair()[1]], TypeError, "generator"),
    ],
)
def test_pixel_metric_errors(metric, masks, maps, error, match):
    with pytest.raises(error, match=match):
        metric(masks, maps)


@pytest.mark.parametrize("metric", PIXEL_METRICS)
@pytest.mark.parametrize(
    "n_bins, error",
    [(1, ValueError), (0, ValueError), (2.5, TypeError), (True, TypeError)],
)
def test_n_bins_errors(metric, n_bins, error):
    mask, amap = _pair()
    with pytest.raises(error, match="n_bins must be None"):
        metric([mask], [amap], n_bins=n_bins)


@pytest.mark.parametrize("fpr_limit", [0, -0.1, 1.5, "0.3", True, np.nan])
def test_aupro_fpr_limit_errors(fpr_limit):
    mask, amap = _pair()
    with pytest.raises(ValueError, match="fpr_limit must be a number in"):
        aupro([mask], [amap], fpr_limit)


# --------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------
class FakeDetector(OutlierMixin, BaseEstimator):
    """Outlier detector whose score_samples is minus the (powered) image sum."""

    def __init__(self, power=1.0):
        self.power = power

    def fit(self, X, y=None):
        self.mean_ = np.mean(X)
        self.offset_ = -np.inf
        return self

    def score_samples(self, X):
        return -np.sign(self.power) * np.asarray(X).sum(axis=(1, 2))

    def decision_function(self, X):
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        return np.where(self.score_samples(X) < self.offset_, -1, 1)


def _image_set(seed=0, n=30):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    X = rng.normal(size=(n, 4, 4)) + 0.6 * y[:, None, None]
    return X, y


@pytest.mark.parametrize(
    "scorer, metric",
    [
        (image_auroc_scorer, image_auroc),
        (image_average_precision_scorer, image_average_precision),
        (f1_max_scorer, f1_max),
        (get_scorer("image_auroc"), image_auroc),
        (get_scorer("image_average_precision"), image_average_precision),
        (get_scorer("f1_max"), f1_max),
    ],
)
@pytest.mark.parametrize("outlier_convention", [False, True])
def test_scorers_score_negated_score_samples(scorer, metric, outlier_convention):
    X, y = _image_set()
    labels = np.where(y == 1, -1, 1) if outlier_convention else y
    detector = FakeDetector().fit(X)
    value = scorer(detector, X, labels)
    assert isinstance(value, float)
    assert value == metric(y, X.sum(axis=(1, 2)))


def test_scorer_in_cross_val_score_matches_per_fold_metric():
    X, y = _image_set()
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scores = cross_val_score(FakeDetector(), X, y, scoring=image_auroc_scorer, cv=cv)
    expected = [
        image_auroc(y[test], X[test].sum(axis=(1, 2))) for _, test in cv.split(X, y)
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_scorer_in_grid_search_prefers_the_right_sign():
    X, y = _image_set()
    search = GridSearchCV(
        FakeDetector(),
        {"power": [-1.0, 1.0]},
        scoring={"auroc": image_auroc_scorer, "f1": f1_max_scorer},
        refit="auroc",
        cv=StratifiedKFold(n_splits=3),
    )
    search.fit(X, y)
    assert search.best_params_ == {"power": 1.0}
    assert search.best_score_ > 0.5


def test_scorer_returns_nan_with_warning_on_single_class_fold():
    X, y = _image_set()
    detector = FakeDetector().fit(X)
    with pytest.warns(UndefinedMetricWarning, match="StratifiedKFold"):
        assert np.isnan(image_auroc_scorer(detector, X[y == 0], y[y == 0]))
    order = np.argsort(y)  # sorted labels + unshuffled KFold: single-class folds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        scores = cross_val_score(
            FakeDetector(), X[order], y[order], scoring=f1_max_scorer, cv=KFold(2)
        )
    assert np.isnan(scores[0]) and np.isfinite(scores[-1])


def test_scorer_errors_and_repr():
    X, y = _image_set()
    with pytest.raises(ValueError, match="needs labels y"):
        image_auroc_scorer(FakeDetector().fit(X), X, None)
    with pytest.raises(ValueError, match="Unknown scorer name 'roc_auc'; expected"):
        get_scorer("roc_auc")
    with pytest.raises(ValueError, match="Unknown scorer name"):
        get_scorer(["f1_max"])
    assert repr(f1_max_scorer) == "get_scorer('f1_max')"


# --------------------------------------------------------------------------
# Threshold calibration
# --------------------------------------------------------------------------
class Float32Detector(FakeDetector):
    """score_samples in float32; decision arithmetic stays in float32."""

    def score_samples(self, X):
        return np.round(-np.asarray(X).sum(axis=(1, 2)), 1).astype(np.float32)

    def predict(self, X):
        return np.where(self.decision_function(X) < 0, -1, 1)


@pytest.mark.parametrize("detector_class", [FakeDetector, Float32Detector])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("outlier_convention", [False, True])
def test_calibrate_threshold_sets_f1_optimal_offset(
    detector_class, seed, outlier_convention
):
    X, y = _image_set(seed)
    labels = np.where(y == 1, -1, 1) if outlier_convention else y
    detector = detector_class().fit(X)
    assert calibrate_threshold(detector, X, labels) is detector
    assert isinstance(detector.offset_, float)
    anomaly = -detector.score_samples(X)
    t = optimal_threshold(y, anomaly)
    assert np.any(anomaly == t)  # some image sits exactly on the threshold
    np.testing.assert_array_equal(detector.predict(X), np.where(anomaly >= t, -1, 1))
    assert f1_score(y, detector.predict(X) == -1) == pytest.approx(f1_max(y, anomaly))
    np.testing.assert_allclose(
        detector.decision_function(X), detector.score_samples(X) - detector.offset_
    )


def test_calibrate_threshold_errors():
    X, y = _image_set()
    with pytest.raises(NotFittedError, match="not fitted"):
        calibrate_threshold(FakeDetector(), X, y)
    detector = FakeDetector().fit(X)
    with pytest.raises(ValueError, match="0 anomalous and 30 normal"):
        calibrate_threshold(detector, X, np.zeros(30))
    with pytest.raises(ValueError, match="10 anomalous and 0 normal"):
        calibrate_threshold(detector, X[y == 1], y[y == 1])
    with pytest.raises(ValueError, match="y holds 29 labels"):
        calibrate_threshold(detector, X, y[:-1])
    with pytest.raises(ValueError, match="metric must be 'f1', got 'auroc'"):
        calibrate_threshold(detector, X, y, metric="auroc")
    assert detector.offset_ == -np.inf  # untouched by the failed calls


# ---------------------------------------------------------------- predicted masks


def _mask_case(seed, shapes=((20, 24), (20, 24), (16, 30), (9, 9))):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for k, shape in enumerate(shapes):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
        masks.append(field > 0.25 if k % 2 else np.zeros(shape, bool))  # defective and normal images
        maps.append((field + rng.normal(0, 0.15, shape)).astype(np.float32))
    return masks, maps


def _slow_regions(masks, predicted):
    """True regions found, and false predicted regions per image, one region at a time."""
    eight = np.ones((3, 3), bool)
    found = total = 0
    false = []
    for m, p in zip(masks, predicted):
        labels, n = ndimage.label(m, structure=eight)
        total += n
        found += sum(bool((p & (labels == k)).any()) for k in range(1, n + 1))
        plabels, pn = ndimage.label(p, structure=eight)
        false.append(sum(not (m & (plabels == k)).any() for k in range(1, pn + 1)))
    return found, total, np.array(false)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_metrics_against_scikit_learn_and_a_slow_reference(seed):
    from sklearn.metrics import jaccard_score

    from skpadim.metrics import false_regions_per_image, pixel_f1_score, pixel_iou, region_recall

    masks, maps = _mask_case(seed)
    threshold = float(np.quantile(np.concatenate([m.ravel() for m in maps]), 0.8))
    predicted = [m >= threshold for m in maps]
    flat_true = np.concatenate([m.ravel() for m in masks])
    flat_pred = np.concatenate([p.ravel() for p in predicted])
    assert pixel_f1_score(masks, predicted) == pytest.approx(f1_score(flat_true, flat_pred), abs=1e-12)
    assert pixel_iou(masks, predicted) == pytest.approx(jaccard_score(flat_true, flat_pred), abs=1e-12)
    found, total, false = _slow_regions(masks, predicted)
    assert region_recall(masks, predicted) == found / total
    assert false_regions_per_image(masks, predicted) == false.mean()
    assert false_regions_per_image(masks, predicted, normal_only=True) == false[[0, 2]].mean()
    # maps at a threshold are their masks `map >= threshold`; {0, 1} masks are booleans
    for f in (pixel_f1_score, pixel_iou, region_recall, false_regions_per_image):
        assert f(masks, maps, threshold=threshold) == f(masks, predicted)
        assert f([m.astype(np.uint8) for m in masks], [p.astype(float) for p in predicted]) == f(masks, predicted)


def test_mask_metrics_refuse_bad_input():
    from skpadim.metrics import false_regions_per_image, pixel_f1_score, pixel_iou, region_recall

    masks, maps = _mask_case(0)
    predicted = [m > 0 for m in maps]
    with pytest.raises(ValueError, match="same number of images, got 4 masks and 3 predictions"):
        pixel_f1_score(masks, predicted[:3])
    with pytest.raises(ValueError, match=r"predicted\[1\] has shape \(20, 23\) but masks\[1\] has shape \(20, 24\)"):
        pixel_iou(masks, [p if i != 1 else p[:, :23] for i, p in enumerate(predicted)])
    with pytest.raises(ValueError, match=r"predicted\[0\] must be a boolean mask .* pass threshold=t"):
        region_recall(masks, maps)
    with pytest.raises(ValueError, match=r"masks\[1\] must be boolean or hold only 0 \(normal\) and 1"):
        pixel_f1_score([m * 2 for m in map(np.uint8, masks)], predicted)
    with pytest.raises(ValueError, match="threshold must be None .* or a real number"):
        pixel_f1_score(masks, maps, threshold="0.5")
    empty = [np.zeros_like(m) for m in masks]
    for f in (pixel_f1_score, pixel_iou, region_recall):
        with pytest.raises(ValueError, match="needs (anomalous pixels|defect regions) in the true masks"):
            f(empty, predicted)
    assert false_regions_per_image(empty, predicted) >= 0  # defined on normal images alone
    with pytest.raises(ValueError, match="needs normal images"):
        false_regions_per_image([masks[1], masks[3]], [predicted[1], predicted[3]], normal_only=True)
    with pytest.raises(ValueError, match="normal_only must be True or False"):
        false_regions_per_image(masks, predicted, normal_only="yes")
