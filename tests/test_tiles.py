"""Native image size and tiles: stitching, both ways of sharing Gaussians, resume, refusals.

Reference checks: one tile that is the whole image is the untiled detector,
bit for bit; the shared Gaussians are those of an untiled detector fitted on
every tile as an image, and the per-location Gaussians those of an untiled
detector fitted on that location's tiles; the stitched map is a slow
weighted average computed pixel by pixel.
"""

import os
import pickle

import numpy as np
import pytest
from cli_helpers import cli, one_thread, save_png  # noqa: F401
from conftest import textured
from sklearn.utils._param_validation import InvalidParameterError

from skpadim import PadimDetector
from skpadim.datasets import make_anomaly_images

FAST = dict(weights=None, n_features=12, random_state=0, device="cpu", batch_size=8)


def wide(n, seed=0):
    """(n, 32, 64, 3) uint8: two 32 px textures side by side."""
    left, right = textured(n, 32, seed), textured(n, 32, seed + 1)
    return np.concatenate([left, right], axis=2)


@pytest.fixture(scope="module")
def X70():
    return wide(70)  # more images than the calibration reservoir (64) and the update buffer (64)


# ------------------------------------------------------------------ stitching


def _slow_stitch(tiles, starts, size, image_size):
    """Weighted average of the tiles covering each pixel, one pixel at a time."""
    th, tw = size
    wy = np.sin(np.pi * (np.arange(th) + 0.5) / th) ** 2
    wx = np.sin(np.pi * (np.arange(tw) + 0.5) / tw) ** 2
    out = np.zeros(image_size)
    for i in range(image_size[0]):
        for j in range(image_size[1]):
            num = den = 0.0
            for t, (y, x) in enumerate(starts):
                if y <= i < y + th and x <= j < x + tw:
                    w = wy[i - y] * wx[j - x]
                    num += w * tiles[t, i - y, j - x]
                    den += w
            out[i, j] = num / den
    return out


def test_stitching_is_a_seamless_weighted_average():
    import torch

    from skpadim._engine.tiles import Tiling

    tiling = Tiling((37, 50), (16, 24), (10, 20), "shared")
    # The last tiles end at the border; every pixel is covered.
    assert tiling.starts[-1] == (37 - 16, 50 - 24)
    ys = sorted({y for y, _ in tiling.starts})
    assert ys == [0, 10, 20, 21]
    rng = np.random.default_rng(0)
    tiles = rng.random((2 * tiling.n_tiles, 16, 24)).astype(np.float32)
    got = tiling.stitch(torch.from_numpy(tiles)).numpy()
    assert got.shape == (2, 37, 50)
    for b in range(2):
        ref = _slow_stitch(tiles[b * tiling.n_tiles : (b + 1) * tiling.n_tiles], tiling.starts, (16, 24), (37, 50))
        np.testing.assert_allclose(got[b], ref, rtol=1e-5, atol=1e-6)
    # Equal tile maps stitch into a flat map; crops of one smooth field into that field.
    flat = tiling.stitch(torch.full((tiling.n_tiles, 16, 24), 3.5)).numpy()
    np.testing.assert_allclose(flat, 3.5, rtol=1e-6)
    yy, xx = np.mgrid[0:37, 0:50]
    field = np.sin(yy / 7.0) + np.cos(xx / 5.0)
    crops = np.stack([field[y : y + 16, x : x + 24] for y, x in tiling.starts]).astype(np.float32)
    np.testing.assert_allclose(tiling.stitch(torch.from_numpy(crops)).numpy()[0], field, atol=1e-5)


# ------------------------------------------------------------------ reference checks


@pytest.mark.parametrize("sharing", ["shared", "position"])
def test_one_tile_as_large_as_the_image_is_the_untiled_detector(X70, sharing):
    X = X70[:, :32, :32]
    plain = PadimDetector(image_size=32, **FAST).fit(X)
    tiled = PadimDetector(image_size=None, tile_size=32, tile_sharing=sharing, **FAST).fit(X)
    test = textured(4, 32, seed=9)
    np.testing.assert_array_equal(tiled.precision_, plain.precision_)
    # Same distances; the untiled maps apply upsampling and smoothing as two matrix
    # products, the tiled ones stitch in between: equal up to float32 rounding.
    np.testing.assert_allclose(tiled.calibration_scores_, plain.calibration_scores_, rtol=2e-6)
    assert tiled.offset_ == pytest.approx(plain.offset_, rel=2e-6) and tiled.n_samples_seen_ == 70
    np.testing.assert_allclose(tiled.anomaly_map(test), plain.anomaly_map(test), rtol=2e-6, atol=1e-6)


def test_gaussians_are_those_of_the_tiles_fitted_as_images():
    X = wide(20, seed=3)
    left, right = X[:, :, :32], X[:, :, 32:]
    shared = PadimDetector(image_size=None, tile_size=32, tile_sharing="shared", **FAST).fit(X)
    position = PadimDetector(image_size=None, tile_size=32, tile_sharing="position", **FAST).fit(X)
    both = PadimDetector(image_size=32, **FAST).fit(np.concatenate([left, right]))
    only_left = PadimDetector(image_size=32, **FAST).fit(left)
    only_right = PadimDetector(image_size=32, **FAST).fit(right)
    P = 8 * 8  # resnet18's layer1 grid of a 32 px tile
    assert shared.mean_.shape == (P, 12) and shared.n_samples_seen_ == 20
    np.testing.assert_allclose(shared.mean_, both.mean_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(shared.precision_, both.precision_, rtol=1e-3, atol=1e-3)
    assert position.mean_.shape == (2 * P, 12) and position.feature_map_shape_ == (8, 8)
    for t, ref in enumerate((only_left, only_right)):
        np.testing.assert_allclose(position.mean_[t * P : (t + 1) * P], ref.mean_, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(position.precision_[t * P : (t + 1) * P], ref.precision_, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("sharing", ["shared", "position"])
def test_maps_have_the_native_size_and_scores_are_their_maximum(sharing):
    X, y, masks = make_anomaly_images(24, 4, image_size=(48, 80), random_state=0)
    det = PadimDetector(image_size=None, tile_size=32, tile_stride=(16, 24), tile_sharing=sharing,
                        sigma=2.0, **FAST).fit(X[y == 0])
    maps, scores = det.anomaly_map(X[-6:], return_scores=True)
    assert maps.shape == (6, 48, 80) and maps.dtype == np.float32
    np.testing.assert_allclose(-maps.max(axis=(1, 2)), scores, rtol=1e-6)
    np.testing.assert_allclose(det.score_samples(X[-6:]), scores, rtol=1e-6)
    n_tiles = 2 * 3  # rows at 0 and 16; columns at 0, 24 and 48
    P = 8 * 8
    assert det.mean_.shape[0] == (P * n_tiles if sharing == "position" else P)
    other = make_anomaly_images(2, 0, image_size=64, random_state=1)[0]
    if sharing == "position":  # another size: a clear error naming the image, not a silent resize
        with pytest.raises(ValueError, match=r"X\[0\] is 64 x 64 pixels, .* own size, 48 x 80 .*image_size=None"):
            det.predict(other)
    else:  # shared tiles: any size at least one tile large, cut into its own tiles
        assert det.anomaly_map(other).shape == (2, 64, 64)
        with pytest.raises(ValueError, match=r"X\[0\] is 16 x 16 pixels, smaller than the model's 32 x 32 tiles"):
            det.predict(other[:, :16, :16])


def test_shared_tiles_score_any_size_as_each_tile_alone():
    """A model with shared tiles takes images of another size: each tile's map is that tile's
    map scored alone (without overlap and smoothing, the stitched map is the tiles' maps)."""
    X = textured(12, size=48)
    det = PadimDetector(image_size=None, tile_size=32, sigma=0.0, **FAST).fit(X)
    big = textured(2, size=64, seed=5)
    maps = det.anomaly_map(list(big) + [X[0]])  # two sizes in one call
    assert [m.shape for m in maps] == [(64, 64), (64, 64), (48, 48)]
    for image, amap in zip(big, maps):
        for y in (0, 32):
            for x in (0, 32):
                alone = det.anomaly_map(image[None, y : y + 32, x : x + 32])[0]
                np.testing.assert_allclose(amap[y : y + 32, x : x + 32], alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(det.score_samples(list(big)), [-m.max() for m in maps[:2]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"X\[20\] is 64 x 64 pixels, but with image_size=None"):
        PadimDetector(image_size=None, tile_size=32, **FAST).fit(list(textured(20, size=48)) + [big[0]])


# ------------------------------------------------------------------ resume


@pytest.mark.parametrize("sharing", ["shared", "position"])
def test_partial_fit_after_pickle_and_load_equals_one_fit(X70, tmp_path, sharing):
    params = dict(image_size=None, tile_size=(32, 24), tile_stride=(32, 20), tile_sharing=sharing, **FAST)
    full = PadimDetector(**params).fit(X70)
    first = PadimDetector(**params).partial_fit(X70[:40])
    first.save(tmp_path / "m.skpadim")
    resumed = [pickle.loads(pickle.dumps(first)), PadimDetector.load(tmp_path / "m.skpadim")]
    test = wide(3, seed=7)
    for det in resumed:
        det.partial_fit(X70[40:])
        assert det.n_samples_seen_ == 70
        np.testing.assert_allclose(det.precision_, full.precision_, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(det.calibration_scores_, full.calibration_scores_, rtol=1e-4)
        np.testing.assert_allclose(det.anomaly_map(test), full.anomaly_map(test), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="'tile_sharing' parameter changed"):
        resumed[0].set_params(tile_sharing="position" if sharing == "shared" else "shared").partial_fit(X70[:2])
    with pytest.raises(ValueError, match="'tile_size' parameter changed from None"):
        PadimDetector(image_size=None, **FAST).fit(X70[:4]).set_params(tile_size=32).partial_fit(X70[:2])


# ------------------------------------------------------------------ refusals


def test_memory_check_refuses_before_any_image_and_names_the_knob(monkeypatch):
    from skpadim._engine import memory, state

    monkeypatch.setattr(memory, "available_bytes", lambda device: 200 * 2**20)

    def never(*args, **kwargs):
        raise AssertionError("an image was processed before the memory check")

    monkeypatch.setattr(state.Embedder, "batches", never)
    X = np.zeros((2, 512, 512, 3), np.uint8)  # 8 x 8 tiles of 64 px: 16384 positions of 100 features
    det = PadimDetector(weights=None, image_size=None, tile_size=64, tile_sharing="position", n_features=100)
    with pytest.raises(MemoryError, match=r"tile_sharing='shared'.*tile_stride"):
        det.fit(X)
    det.set_params(tile_sharing="shared", tile_size=256, n_features=448)
    with pytest.raises(MemoryError, match=r"Lower n_features, or use a larger tile_stride"):
        det.fit(X)
    with pytest.raises(MemoryError, match=r"Set tile_size"):
        PadimDetector(weights=None, image_size=None, n_features=100).fit(X)


def test_invalid_tile_parameters_are_refused_with_their_name():
    X = textured(3, 32)
    with pytest.raises(InvalidParameterError, match="'tile_sharing' parameter"):
        PadimDetector(tile_sharing="tiles", **FAST).fit(X)
    with pytest.raises(InvalidParameterError, match="'tile_size' parameter"):
        PadimDetector(tile_size=0, **FAST).fit(X)
    with pytest.raises(ValueError, match="'tile_stride' parameter .* but tile_size is None"):
        PadimDetector(tile_stride=16, **FAST).fit(X)
    with pytest.raises(ValueError, match="'tile_stride' parameter .* gaps"):
        PadimDetector(image_size=None, tile_size=16, tile_stride=20, **FAST).fit(X)
    with pytest.raises(ValueError, match="'tile_size' parameter .* larger than the images \\(32 x 32"):
        PadimDetector(image_size=None, tile_size=(16, 48), **FAST).fit(X)
    with pytest.raises(ValueError, match="shift_tolerance=1 is not supported with tile_size=16"):
        PadimDetector(tile_size=16, shift_tolerance=1, **FAST).fit(X)
    mixed = [textured(1, 32)[0], textured(1, 48)[0]]
    with pytest.raises(ValueError, match=r"X\[1\] is 48 x 48 pixels, but with image_size=None .* own size, 32 x 32 pixels"):
        PadimDetector(image_size=None, **FAST).fit(mixed)


@pytest.mark.onnx
@pytest.mark.parametrize("sharing", ["shared", "position"])
def test_tiled_and_native_detectors_export_and_the_runtime_stitches_alike(tmp_path, sharing):
    """The runtime cuts, stitches and smooths tiles as the detector does, takes the sizes
    the detector takes (shared tiles: any size; per-location tiles: the native size only)
    and refuses the others with the same words."""
    from skpadim.export import to_onnx
    from skpadim.runtime import OnnxDetector

    X = wide(12)
    det = PadimDetector(image_size=None, tile_size=(24, 32), tile_stride=(8, 16), tile_sharing=sharing,
                        **FAST).fit(X)
    exported = OnnxDetector(to_onnx(det, tmp_path / "m.onnx"), batch_size=5)
    assert exported.config_["graph"] == "tiles" and exported.fitted_params_ == det.fitted_params_
    other = [textured(1, 48, seed=4)[0], X[0], wide(1, seed=2)[0]]
    takes = other if sharing == "shared" else X[:3]
    maps, scores = det.anomaly_map(takes, return_scores=True)
    got, got_scores = exported.anomaly_map(takes, return_scores=True)
    for m, g in zip(maps, got):
        assert m.shape == g.shape
        np.testing.assert_allclose(g, m, rtol=1e-4, atol=1e-4 * float(np.abs(m).max()))
    np.testing.assert_allclose(got_scores, scores, rtol=1e-5)
    if sharing == "position":
        for model in (det, exported):
            with pytest.raises(ValueError, match=r"X\[0\] is 48 x 48 pixels, but the model works at"):
                model.predict(other)


# ------------------------------------------------------------------ generated data


def test_defect_size_sets_the_defects_size_in_pixels():
    X, y, masks = make_anomaly_images(1, 12, image_size=256, defect_size=(4, 8), random_state=0)
    area = masks[1:].sum(axis=(1, 2))
    assert (area >= 1).all() and area.max() <= 8 * 8 * 8  # a scratch: 8 px wide, at most 64 long
    rows = masks[1:].any(axis=2).sum(axis=1)
    cols = masks[1:].any(axis=1).sum(axis=1)
    assert np.maximum(rows, cols).max() <= 8 * 8 + 2  # not proportional to the image
    for bad in (0.5, (8, 4), 100, "big", (1, 2, 3), True):
        with pytest.raises(ValueError, match="defect_size"):
            make_anomaly_images(1, 1, image_size=256, defect_size=bad)


# ------------------------------------------------------------------ command line


def test_command_line_fits_native_size_in_tiles(tmp_path, capsys, one_thread):

    for i, x in enumerate(wide(6)):
        save_png(tmp_path / "good" / f"{i}.png", x)
    status, out, err = cli(capsys, "fit", tmp_path / "good", "--out", tmp_path / "m.skpadim", "--weights", "none",
                           "--n-features", "12", "--image-size", "native", "--tile-size", "32",
                           "--tile-stride", "32x16", "--tile-sharing", "position", "-q")
    assert status == 0, err
    det = PadimDetector.load(tmp_path / "m.skpadim")
    assert det.image_size is None and det.tile_size == 32 and det.tile_stride == (32, 16)
    assert det.tile_sharing == "position" and det.mean_.shape == (3 * 8 * 8, 12)
    status, out, err = cli(capsys, "info", tmp_path / "m.skpadim")
    assert status == 0 and "32 x 64 (height x width)" in out, err
    status, out, err = cli(capsys, "fit", tmp_path / "good", "--out", tmp_path / "n.skpadim", "--image-size", "nativ")
    assert status == 2 and "--image-size" in err and "'nativ'" in err
