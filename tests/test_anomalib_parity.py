"""Parity with anomalib's PaDiM (anomalib.models.image.padim.torch_model).

Same inputs, same backbone weights (a seeded random resnet18, loaded into
anomalib's own timm feature extractor), same random channels (anomalib's
``idx`` buffer set to our ``feature_index_``): the anomaly maps must agree up
to float32 round-off. The one deliberate difference is the regularization:
anomalib adds ``0.01 * I`` and then another ``1e-5 * I`` to every covariance,
we add ``epsilon * I`` (default 0.01, the paper's value); with
``epsilon=0.01001`` the two agree to ~1e-6 relative.

anomalib is part of the ``test`` extra; these tests fail (they do not skip)
when it is missing. The wiring of anomalib is ``benchmarks/anomalib_adapter.py``,
shared with ``benchmarks/compare_anomalib.py``, whose ``--quick`` mode is
run at the end of this file on the real data set (its results.json is read).
"""

import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from skpadim import PadimDetector
from skpadim._engine.maps import smooth, upsample
from skpadim.datasets import make_anomaly_images
from skpadim.metrics import image_auroc

REPO = Path(__file__).resolve().parents[1]
ADAPTER = REPO / "benchmarks" / "anomalib_adapter.py"
ANOMALIB_EPSILON = 0.01 + 1e-5  # anomalib 2.x: cov + 0.01 I, then + 1e-5 I
SIZE = 64

pytestmark = pytest.mark.anomalib


def _adapter():
    spec = importlib.util.spec_from_file_location("anomalib_adapter", ADAPTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def adapter():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import anomalib.models.image.padim.torch_model  # noqa: F401  (fails if missing)
    return _adapter()


@pytest.fixture(scope="module")
def data():
    X, y, masks = make_anomaly_images(n_normal=10, n_anomalous=4, image_size=SIZE, random_state=0)
    return X, y, masks


def _detector(data, epsilon):
    X, y, _ = data
    det = PadimDetector(weights=None, image_size=SIZE, random_state=0, device="cpu", epsilon=epsilon)
    return det.fit(X[y == 0])


@pytest.fixture(scope="module")
def ours(data):
    return _detector(data, ANOMALIB_EPSILON)


@pytest.fixture(scope="module")
def theirs(adapter, data, ours):
    X, y, _ = data
    model = adapter.padim_model(ours.layers_, ours.feature_index_, resnet18_state=ours.backbone_.state_dict())
    adapter.fit(model, adapter.image_batches(X[y == 0], "imagenet"))
    maps, scores = adapter.predict(model, adapter.image_batches(X, "imagenet"), len(X), (SIZE, SIZE))
    return model, maps, scores


def test_same_features_and_embedding(adapter, data, ours, theirs):
    """anomalib's timm extractor with our weights sees what our LayerTaps see."""
    model = theirs[0]
    x = next(adapter.image_batches(data[0][:4], "imagenet"))
    with torch.no_grad():
        feats = model.feature_extractor(x)
        emb = model.generate_embedding(feats)  # (B, d, h, w), anomalib's layout
        taps = ours._state.embedder.taps(x)
    for name, f in zip(ours.layers_, taps):
        torch.testing.assert_close(feats[name], f, rtol=1e-6, atol=1e-6)
    h, w = ours.feature_map_shape_
    mine = ours._state.layout.patches(taps).reshape(h, w, -1, len(x)).permute(3, 2, 0, 1)
    torch.testing.assert_close(emb, mine, rtol=1e-6, atol=1e-6)
    assert torch.equal(model.idx, torch.as_tensor(ours.feature_index_))


def test_same_gaussians(ours, theirs):
    model = theirs[0]
    mean = model.gaussian.mean.T.double().numpy()  # anomalib: (d, P)
    np.testing.assert_allclose(ours.mean_, mean, rtol=0, atol=1e-5 * np.abs(mean).max())
    inv = model.gaussian.inv_covariance.numpy()
    # 10 images, d=100: singular sample covariance, precision entries up to 1/epsilon.
    rel = np.abs(ours.precision_ - inv).max() / np.abs(inv).max()
    assert rel < 1e-4, rel


def test_same_upsampling_and_blur(adapter):
    from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator

    gen = AnomalyMapGenerator(sigma=4)
    rng = np.random.default_rng(0)
    dist = torch.from_numpy(rng.random((3, 16, 16)).astype(np.float32)) * 10
    up_theirs = gen.up_sample(dist[:, None], (SIZE, SIZE))
    torch.testing.assert_close(upsample(dist, (SIZE, SIZE)), up_theirs[:, 0], rtol=0, atol=0)
    blurred = gen.smooth_anomaly_map(up_theirs)[:, 0]
    # Same kernel (33 taps for sigma=4), same reflect padding; ours is separable.
    torch.testing.assert_close(smooth(up_theirs[:, 0], 4.0), blurred, rtol=1e-6, atol=1e-5)


def test_same_maps_and_scores(data, ours, theirs):
    X, y, _ = data
    _, their_maps, their_scores = theirs
    maps = ours.anomaly_map(X)
    scores = -ours.score_samples(X)
    scale = np.abs(their_maps).max()
    assert np.abs(maps - their_maps).max() / scale < 1e-5
    np.testing.assert_allclose(scores, their_scores, rtol=1e-5)
    assert image_auroc(y, scores) == image_auroc(y, their_scores)


def test_default_epsilon_is_the_only_difference(data, theirs):
    """With the paper's epsilon=0.01 the maps differ by ~sqrt(1.001) - 1 = 5e-4."""
    X, _, _ = data
    det = _detector(data, 0.01)
    their_maps = theirs[1]
    rel = np.abs(det.anomaly_map(X) - their_maps).max() / np.abs(their_maps).max()
    # Few images (10 < d=100): most directions have variance epsilon exactly,
    # so distances scale with 1 / sqrt(epsilon).
    assert 1e-5 < rel < 1e-3, rel


# --------------------------------------------------------------------------
# Smoke test of the benchmark script on the real data set
# --------------------------------------------------------------------------
@pytest.mark.realdata
def test_benchmark_quick(magnetic_tile, tmp_path, run_benchmark):
    run_benchmark("compare_anomalib.py", "--quick", "--root", magnetic_tile, "--out", tmp_path)
    report = json.loads((tmp_path / "quick" / "results.json").read_text())
    rows = {r["impl"]: r for r in report["rows"]}
    assert sorted(rows) == ["anomalib", "skpadim"], report["rows"]
    keys = ("image_auroc", "pixel_auroc", "aupro")
    for r in rows.values():
        assert "error" not in r, r
        assert (r["backbone"], r["n_train"]) == ("resnet18-random", 40), r
        assert all(math.isfinite(r[k]) and 0 <= r[k] <= 1 for k in keys), r
        assert r["fit_s"] > 0 and r["predict_s"] > 0 and r["peak_rss_mib"] > 0, r
    # Same inputs, weights and channels: the same metrics.
    for k in keys:
        assert abs(rows["skpadim"][k] - rows["anomalib"][k]) < 2e-3, (k, rows)
    (parity,) = report["parity"]
    assert (parity["backbone"], parity["n_train"]) == ("resnet18-random", 40)
    assert parity["map_max_rel"] < 1e-3  # max map difference / max map value
    data = report["data"]
    assert data["n_train"] == 40 and 0 < data["n_test_defective"] < data["n_test"], data
