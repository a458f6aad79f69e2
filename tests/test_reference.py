"""The fast implementation against the slow float64 reference in reference.py."""

import numpy as np
import pytest

from skpadim import PadimDetector

from conftest import SMALL, textured
import reference


@pytest.mark.parametrize("sigma", [4.0, 0.0, 1.5])
def test_fit_and_maps_match_reference(images, sigma):
    det = PadimDetector(**{**SMALL, "sigma": sigma}).fit(images)
    E = reference.embeddings(det, images)
    mean, precision = reference.fit_gaussians(E, det.epsilon)
    np.testing.assert_allclose(det.mean_, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(det.precision_, precision, rtol=2e-4, atol=2e-4 * np.abs(precision).max())

    test = textured(5, seed=7)
    expected = reference.maps(reference.embeddings(det, test), mean, precision, (32, 32), sigma)
    got = det.anomaly_map(test)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())
    np.testing.assert_allclose(det.score_samples(test), -expected.max(axis=(1, 2)), rtol=1e-4)


def test_reference_check_with_uneven_grids():
    """image_size whose layer grids are not integer multiples (nearest index rule)."""
    X = textured(10, size=40, seed=3)
    det = PadimDetector(**{**SMALL, "image_size": (40, 36)}).fit(X)
    E = reference.embeddings(det, X)
    assert det.feature_map_shape_ == E.shape[-2:]
    mean, precision = reference.fit_gaussians(E, det.epsilon)
    np.testing.assert_allclose(det.mean_, mean, rtol=1e-5, atol=1e-5)
    expected = reference.maps(E[:3], mean, precision, (40, 36), det.sigma)
    got = det.anomaly_map(X[:3])  # inputs are 40x40: maps come back at 40x40
    assert got.shape == (3, 40, 40)
    assert np.isclose(got.max(axis=(1, 2)), expected.max(axis=(1, 2)), rtol=1e-3).all()


@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_training_sets_match_reference(n):
    X = textured(n, seed=11)
    det = PadimDetector(**SMALL).fit(X)
    mean, precision = reference.fit_gaussians(reference.embeddings(det, X), det.epsilon)
    np.testing.assert_allclose(det.precision_, precision, rtol=2e-4, atol=2e-4 * np.abs(precision).max())
    scores = det.score_samples(textured(3, seed=12))
    assert np.all(np.isfinite(scores)) and np.isfinite(det.offset_)


def test_calibration_scores_are_out_of_sample():
    """offset_ comes from held-out images scored by Gaussians fitted without them."""
    X = textured(30, seed=5)
    det = PadimDetector(**{**SMALL, "contamination": 0.25}).fit(X)
    sample = det._state.sample
    items, ids = sample.held_out(det.n_samples_seen_)
    assert len(ids) == 30 // 5 and len(set(ids.tolist())) == len(ids)
    # The stored channels are those of the images the ids name.
    held = det._state.layout.patches.embed_kept(items).cpu().numpy().transpose(2, 1, 0)  # (k, d, P)
    E = reference.embeddings(det, X).reshape(30, len(det.feature_index_), -1)
    np.testing.assert_allclose(held, E[ids], rtol=1e-5, atol=1e-5)
    others = np.setdiff1d(np.arange(30), ids)
    ref = PadimDetector(**SMALL).fit(X[others])
    np.testing.assert_allclose(det.calibration_scores_, ref.score_samples(X[ids]), rtol=1e-4)
    assert det.offset_ == pytest.approx(np.percentile(det.calibration_scores_, 25, method="weibull"))


@pytest.mark.parametrize("grid, size, sigma", [
    ((8, 8), (32, 32), 4.0),  # the detector's usual case: upsample x4, mirror borders
    ((7, 9), (30, 41), 1.5),  # uneven factors, non-square
    ((8, 8), (32, 32), 0.0),  # upsampling only
    ((12, 12), (12, 12), 2.0),  # smoothing only
    ((3, 5), (6, 10), 4.0),  # a map smaller than the kernel radius: replicated borders
])
def test_maps_as_matrix_products_match_interpolation_and_filter(grid, size, sigma):
    """anomaly_maps applies resize + smoothing as two matrices; scipy's filter (mirror
    borders) and torch's interpolation, step by step, give the same maps."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    from skpadim._engine.maps import anomaly_maps

    dist = np.random.default_rng(1).random((3, *grid)) * 10
    got = anomaly_maps(torch.from_numpy(dist).float(), size, sigma).numpy()
    up = F.interpolate(torch.from_numpy(dist)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    up = up.numpy()
    r = 2 * int(4 * sigma + 0.5) + 1 >> 1
    mode = "mirror" if r < min(size) else "nearest"
    expected = up if sigma == 0 else np.stack(
        [ndimage.gaussian_filter(m, sigma, mode=mode, truncate=4.0) for m in up])
    assert got.shape == (3, *size)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.max())
