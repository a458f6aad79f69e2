"""Accuracy options beyond the paper's recipe, against slow reference implementations.

Every option off gives the paper's maps (the anomalib parity test checks that
separately); every option on is checked against a loop over images or
positions, and survives pickle, save/load, partial_fit after load and ONNX
export (or is refused by it).
"""

import math
import pickle

import numpy as np
import pytest

from skpadim import PadimDetector

from conftest import SMALL, textured


@pytest.fixture(scope="module")
def data():
    X = textured(70, seed=21)  # more than the 64-image buffers hold
    X_test = textured(8, seed=22)
    X_test[:3, 8:14, 10:16] = 255  # bright defects
    return X, X_test


def top_mean_reference(maps, fraction):
    """Mean of the ceil(fraction * H * W) highest values of every map, one image at a time."""
    out = []
    for m in maps:
        k = max(1, math.ceil(round(fraction * m.size, 9)))
        out.append(np.sort(m.ravel().astype(np.float64))[::-1][:k].mean())
    return np.array(out)


# ---------------------------------------------------------------- image_score


@pytest.mark.parametrize("fraction", [0.01, 1e-9])
def test_image_score_is_the_mean_of_the_top_fraction(data, fraction):
    X, X_test = data
    det = PadimDetector(**SMALL, image_score=fraction).fit(X[:30])
    maps = det.anomaly_map(X_test)  # inputs at image_size: these are the maps that are scored
    expected = top_mean_reference(maps, fraction)
    np.testing.assert_allclose(-det.score_samples(X_test), expected, rtol=1e-5)
    _, scores = det.anomaly_map(X_test, return_scores=True)
    np.testing.assert_allclose(scores, det.score_samples(X_test), rtol=1e-6)
    # The maps themselves do not depend on the image score.
    base = PadimDetector(**SMALL).fit(X[:30])
    np.testing.assert_array_equal(base.anomaly_map(X_test), maps)
    if fraction < 1e-6:  # one pixel: the maximum
        np.testing.assert_allclose(det.score_samples(X_test), base.score_samples(X_test), rtol=1e-6)


def test_image_score_sets_the_calibration_scores_too(data):
    X, _ = data
    base = PadimDetector(**SMALL).fit(X)
    det = PadimDetector(**SMALL, image_score=0.05).fit(X)
    # The same held-out images, scored the same way as score_samples scores new ones.
    state = det._state
    items = state.sample.held_out(state.n)[0]
    emb = state.layout.patches.embed_kept(items)
    dist = state.stats.distances_of(emb, state.epsilon, held_out=True).T.float().reshape(-1, *state.grid)
    from skpadim._engine.maps import anomaly_maps

    maps = anomaly_maps(dist, state.layout.image_size, state.sigma).cpu().numpy()
    np.testing.assert_allclose(-det.calibration_scores_, top_mean_reference(maps, 0.05), rtol=1e-5)
    assert np.all(det.calibration_scores_ > base.calibration_scores_)  # a mean is below the maximum
    assert det.offset_ != base.offset_


def test_image_score_survives_pickle_save_load_and_resume(data, tmp_path):
    X, X_test = data
    det = PadimDetector(**SMALL, image_score=0.02).fit(X[:40])
    expected = det.score_samples(X_test)
    clone = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(clone.score_samples(X_test), expected)
    det.save(tmp_path / "m.skpadim")
    loaded = PadimDetector.load(tmp_path / "m.skpadim")
    assert loaded.image_score == 0.02
    np.testing.assert_array_equal(loaded.score_samples(X_test), expected)
    loaded.partial_fit(X[40:])
    whole = PadimDetector(**SMALL, image_score=0.02).fit(X)
    np.testing.assert_allclose(loaded.score_samples(X_test), whole.score_samples(X_test), rtol=1e-4)
    # The value in use is the one fixed at fit (like sigma) until the next fit.
    loaded.set_params(image_score="max")
    np.testing.assert_allclose(loaded.score_samples(X_test), whole.score_samples(X_test), rtol=1e-4)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "mean", True, float("nan"), None])
def test_image_score_is_validated(data, value):
    with pytest.raises(ValueError, match=r"The 'image_score' parameter of PadimDetector must be"):
        PadimDetector(**SMALL, image_score=value).fit(data[0][:4])


@pytest.mark.onnx
def test_image_score_is_exported_to_onnx(data, tmp_path):
    pytest.importorskip("onnxruntime")
    from skpadim.export import to_onnx
    from skpadim.runtime import OnnxDetector

    X, X_test = data
    det = PadimDetector(**{**SMALL, "device": "cpu"}, image_score=0.03).fit(X[:30])  # as the export runs
    to_onnx(det, tmp_path / "m.onnx")
    got = OnnxDetector(tmp_path / "m.onnx").score_samples(X_test)
    np.testing.assert_allclose(got, det.score_samples(X_test), rtol=1e-5)


# -------------------------------------------------------------- neighbourhood


@pytest.mark.parametrize("k, size", [(3, 32), (5, (40, 36))])
def test_neighbourhood_matches_reference(data, k, size):
    import reference

    X, X_test = data
    X = X[:12]
    det = PadimDetector(**{**SMALL, "image_size": size}, neighbourhood=k).fit(X)
    E = reference.embeddings(det, X, neighbourhood=k)
    mean, precision = reference.fit_gaussians(E, det.epsilon)
    np.testing.assert_allclose(det.mean_, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(det.precision_, precision, rtol=2e-4, atol=2e-4 * np.abs(precision).max())
    size = (size, size) if isinstance(size, int) else size
    test = np.stack([np.asarray(__import__("PIL.Image").Image.fromarray(x).resize(size[::-1])) for x in X_test[:3]])
    expected = reference.maps(reference.embeddings(det, test, neighbourhood=k), mean, precision, size, det.sigma)
    np.testing.assert_allclose(det.anomaly_map(test), expected, rtol=1e-4, atol=1e-4 * expected.max())
    # Not the paper's embedding.
    assert not np.allclose(PadimDetector(**{**SMALL, "image_size": size}).fit(X).mean_, det.mean_)


def test_neighbourhood_survives_pickle_save_load_and_resume(data, tmp_path):
    X, X_test = data
    det = PadimDetector(**SMALL, neighbourhood=3).fit(X[:40])
    expected = det.anomaly_map(X_test)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).anomaly_map(X_test), expected)
    det.save(tmp_path / "m.skpadim")
    loaded = PadimDetector.load(tmp_path / "m.skpadim")
    np.testing.assert_array_equal(loaded.anomaly_map(X_test), expected)
    loaded.partial_fit(X[40:])  # the calibration sample (raw channels) is averaged the same way
    whole = PadimDetector(**SMALL, neighbourhood=3).fit(X)
    np.testing.assert_allclose(loaded.precision_, whole.precision_, rtol=1e-3, atol=1e-3 * np.abs(whole.precision_).max())
    np.testing.assert_allclose(loaded.calibration_scores_, whole.calibration_scores_, rtol=1e-4)
    with pytest.raises(ValueError, match="'neighbourhood' parameter changed from 3 to 1"):
        loaded.set_params(neighbourhood=1).partial_fit(X[:5])
    plain = PadimDetector(**SMALL).fit(X[:10])
    with pytest.raises(ValueError, match="'neighbourhood' parameter changed from 1 to 5"):
        plain.set_params(neighbourhood=5).partial_fit(X[:5])


@pytest.mark.parametrize("value", [0, 2, 4, -3, 3.0, True, "3", None])
def test_neighbourhood_is_validated(data, value):
    with pytest.raises(ValueError, match=r"The 'neighbourhood' parameter of PadimDetector must be an odd int >= 1"):
        PadimDetector(**SMALL, neighbourhood=value).fit(data[0][:4])


@pytest.mark.onnx
def test_neighbourhood_is_exported_to_onnx(data, tmp_path):
    pytest.importorskip("onnxruntime")
    from skpadim.export import to_onnx
    from skpadim.runtime import OnnxDetector

    X, X_test = data
    det = PadimDetector(**{**SMALL, "device": "cpu"}, neighbourhood=3).fit(X[:30])  # as the export runs
    to_onnx(det, tmp_path / "m.onnx")
    maps, scores = OnnxDetector(tmp_path / "m.onnx").anomaly_map(X_test, return_scores=True)
    eager = det.anomaly_map(X_test)
    np.testing.assert_allclose(maps, eager, atol=1e-5 * eager.max())
    np.testing.assert_allclose(scores, det.score_samples(X_test), rtol=1e-5)


# ------------------------------------------------------------ shift_tolerance


@pytest.mark.parametrize("radius, size", [(1, 32), (2, (40, 36))])
def test_shift_tolerance_matches_reference(data, radius, size):
    import reference

    X, X_test = data
    det = PadimDetector(**{**SMALL, "image_size": size}, shift_tolerance=radius).fit(X[:12])
    E = reference.embeddings(det, X[:12])
    mean, precision = reference.fit_gaussians(E, det.epsilon)
    size = (size, size) if isinstance(size, int) else size
    test = np.stack([np.asarray(__import__("PIL.Image").Image.fromarray(x).resize(size[::-1])) for x in X_test[:3]])
    E_test = reference.embeddings(det, test)
    expected = reference.maps(E_test, mean, precision, size, det.sigma, radius=radius)
    got = det.anomaly_map(test)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())
    plain = reference.maps(E_test, mean, precision, size, det.sigma)
    assert np.all(got <= plain * (1 + 1e-5)) and not np.allclose(got, plain)


def test_shift_tolerance_calibration_is_out_of_sample(data):
    """Held-out images are scored by neighbours' Gaussians fitted without them."""
    X, _ = data
    X = X[:30]
    det = PadimDetector(**{**SMALL, "contamination": 0.25}, shift_tolerance=1).fit(X)
    ids = det._state.sample.held_out(det.n_samples_seen_)[1]
    others = np.setdiff1d(np.arange(len(X)), ids)
    ref = PadimDetector(**SMALL, shift_tolerance=1).fit(X[others])
    np.testing.assert_allclose(det.calibration_scores_, ref.score_samples(X[ids]), rtol=1e-4)


def test_shift_tolerance_survives_pickle_save_load_and_resume(data, tmp_path):
    X, X_test = data
    det = PadimDetector(**SMALL, shift_tolerance=1).fit(X[:40])
    expected = det.anomaly_map(X_test)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).anomaly_map(X_test), expected)
    det.save(tmp_path / "m.skpadim")
    loaded = PadimDetector.load(tmp_path / "m.skpadim")
    np.testing.assert_array_equal(loaded.anomaly_map(X_test), expected)
    loaded.partial_fit(X[40:])
    whole = PadimDetector(**SMALL, shift_tolerance=1).fit(X)
    np.testing.assert_allclose(loaded.anomaly_map(X_test), whole.anomaly_map(X_test), rtol=1e-3)
    np.testing.assert_allclose(loaded.calibration_scores_, whole.calibration_scores_, rtol=1e-4)


@pytest.mark.parametrize("value", [-1, 1.0, True, "1", None])
def test_shift_tolerance_is_validated(data, value):
    with pytest.raises(ValueError, match=r"The 'shift_tolerance' parameter of PadimDetector must be"):
        PadimDetector(**SMALL, shift_tolerance=value).fit(data[0][:4])


@pytest.mark.onnx
def test_shift_tolerance_exports_exactly(data, tmp_path):
    """The exported graph takes each patch's smallest distance over the shift window too."""
    pytest.importorskip("onnxruntime")
    from skpadim.export import to_onnx
    from skpadim.runtime import load

    det = PadimDetector(**SMALL, shift_tolerance=1).fit(data[0][:10])
    runtime = load(to_onnx(det, tmp_path / "m.onnx"))
    X = data[0][10:14]
    np.testing.assert_allclose(runtime.score_samples(X), det.score_samples(X), rtol=1e-5)
    base = PadimDetector(**SMALL).fit(data[0][:10])  # the window changes the scores: it is in the graph
    assert not np.allclose(det.score_samples(X), base.score_samples(X), rtol=1e-3)


def _oas_reference(x, eps):
    """Per position: (mean, precision) of sklearn's OAS covariance + eps * I; x is (P, d, n)."""
    from sklearn.covariance import OAS

    covs = [OAS(assume_centered=False).fit(x[p].T).covariance_ for p in range(len(x))]
    return np.stack([np.linalg.inv(c + eps * np.eye(x.shape[1])) for c in covs])


@pytest.mark.parametrize("n, d", [(12, 6), (70, 4)])  # fewer and more images than dimensions
def test_oas_covariance_matches_sklearn(n, d):
    import torch

    from skpadim._engine.gaussian import GaussianStats

    g = torch.Generator().manual_seed(n)
    x = 50 + torch.randn(5, d, n, generator=g) * torch.linspace(0.2, 3, d)[None, :, None]
    s = GaussianStats.empty(5, d, "cpu")
    s.update(x[..., : n // 2].clone())
    s.update(x[..., n // 2 :].clone())
    expected = _oas_reference(x.double().numpy(), 0.01)
    np.testing.assert_allclose(s.precision(0.01, torch.float64, covariance="oas").numpy(), expected, rtol=1e-5)
    assert not np.allclose(s.precision(0.01, torch.float64).numpy(), expected, rtol=1e-3)
    # Held out: each left-out image is scored by the OAS Gaussians of the others.
    out = x[..., :3]
    rest = x[..., 3:].double().numpy()
    prec = _oas_reference(rest, 0.01)
    mean = rest.mean(-1)
    diff = out.double().numpy() - mean[..., None]
    ref = np.sqrt(np.einsum("pik,pij,pjk->pk", diff, prec, diff))
    got = s.distances_of(out.clone(), 0.01, held_out=True, covariance="oas").numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_oas_covariance_survives_pickle_save_load_and_resume(data, tmp_path):
    X, X_test = data
    det = PadimDetector(**SMALL, covariance="oas").fit(X[:40])
    expected = det.score_samples(X_test)
    assert np.abs(expected - PadimDetector(**SMALL).fit(X[:40]).score_samples(X_test)).max() > 1e-3
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).score_samples(X_test), expected)
    det.save(tmp_path / "m.skpadim")
    loaded = PadimDetector.load(tmp_path / "m.skpadim")
    assert loaded.covariance == "oas"
    np.testing.assert_array_equal(loaded.score_samples(X_test), expected)
    loaded.partial_fit(X[40:])
    whole = PadimDetector(**SMALL, covariance="oas").fit(X)
    np.testing.assert_allclose(loaded.score_samples(X_test), whole.score_samples(X_test), rtol=1e-4)
    np.testing.assert_allclose(loaded.offset_, whole.offset_, rtol=1e-4)
    with pytest.raises(ValueError, match=r"The 'covariance' parameter of PadimDetector must be"):
        PadimDetector(**SMALL, covariance="ledoit").fit(X[:4])
