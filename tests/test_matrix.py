"""Every option on every path: each cell equals the one-process detector, or is refused.

Options (one detector each, fitted in one process on the same image files):
a named backbone, a module backbone, tiles shared and per location, the
native size, ``covariance='oas'``, ``shift_tolerance``, ``neighbourhood``,
``image_score`` and a float ``contamination``. Paths: save and load,
``partial_fit`` after a load (a resumed fit), export and the torch-free
runtime, the cluster fit, cluster scoring, and several threads at once. A
cell passes when the path's model gives the reference's maps and scores to
float32 round-off (and, where it fits, the same statistics, calibration
images, ``offset_`` and ``pixel_threshold_``; the defect regions the path
computes from its own maps, and to a pixel the reference's). No cell of
this matrix is refused; the refusals that exist (a combination refused on every path, export of a backbone run in
reduced precision) are tested where they belong.
"""

import threading

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_close_regions, textured
from PIL import Image

from skpadim import PadimDetector, _regions

N = 30  # images fitted (6 held out for the calibration)
BASE = dict(weights=None, image_size=48, n_features=10, batch_size=8, random_state=0, device="cpu")


def _module():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None)


OPTIONS = {
    "named": {},
    "module": dict(backbone=_module(), layers=["layer1", "layer2", "layer3"]),
    "tiles-shared": dict(image_size=None, tile_size=32, tile_stride=16),
    "tiles-position": dict(tile_size=32, tile_stride=16, tile_sharing="position"),
    "native": dict(image_size=None),
    "oas": dict(covariance="oas"),
    "shift_tolerance": dict(shift_tolerance=1),
    "neighbourhood": dict(neighbourhood=3),
    "image_score": dict(image_score=0.05),
    "contamination": dict(contamination=0.2),
}
PATHS = ["save/load", "partial_fit after load", "export + runtime", "cluster fit", "cluster scoring",
         "threads"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    out = []
    images = textured(N + 6, size=48, seed=11)
    images[N::2, 10:18, 20:30] = 255  # half of the new images have a defect
    for i, img in enumerate(images):
        out.append(str(root / f"{i:02d}.png"))
        Image.fromarray(img).save(out[-1])
    return out[:N], out[N:]  # fitted, and new images to score


_REFERENCES = {}


def reference(option, files):
    """The one-process detector of ``option``, fitted once for the module."""
    if option not in _REFERENCES:
        with _quiet():
            _REFERENCES[option] = PadimDetector(**{**BASE, **OPTIONS[option]}).fit(files[0])
    return _REFERENCES[option]


class _quiet:
    """Expected calibration warnings (few held-out images) stay out of the summary."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def assert_same_predictions(model, ref, images):
    maps, scores = ref.anomaly_map(images, return_scores=True)
    got, got_scores = model.anomaly_map(images, return_scores=True)
    for m, g in zip(maps, got):
        assert g.shape == m.shape
        np.testing.assert_allclose(g, m, rtol=1e-4, atol=1e-4 * float(np.abs(m).max()))
    np.testing.assert_allclose(got_scores, scores, rtol=1e-5)
    assert model.offset_ == pytest.approx(ref.offset_, rel=1e-6)
    assert model.pixel_threshold_ == pytest.approx(ref.pixel_threshold_, rel=1e-5)
    assert model.pixel_anchor_ == pytest.approx(ref.pixel_anchor_, rel=1e-5)
    assert model.min_region_area == ref.min_region_area
    np.testing.assert_array_equal(model.predict(images), ref.predict(images))
    # The path's regions come from its maps by the shared rule, and are the reference's.
    regions = model.defect_regions(images)
    settings = _regions.settings_of(model)
    assert regions == [_regions.localize(g, s, settings)[1] for g, s in zip(got, got_scores)]
    assert_close_regions(regions, [_regions.localize(m, s, _regions.settings_of(ref))[1]
                                   for m, s in zip(maps, scores)])


def assert_same_fit(det, ref):
    assert det.n_samples_seen_ == ref.n_samples_seen_
    assert det.fitted_params_ == ref.fitted_params_
    np.testing.assert_allclose(det.mean_, ref.mean_, rtol=1e-5, atol=1e-5)
    scale = np.abs(ref.precision_).max()
    np.testing.assert_allclose(det.precision_, ref.precision_, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(det.calibration_scores_, ref.calibration_scores_, rtol=1e-5)
    assert det.offset_ == pytest.approx(ref.offset_, rel=1e-5)
    assert det.pixel_threshold_ == pytest.approx(ref.pixel_threshold_, rel=1e-5)


# ------------------------------------------------------------------ the paths


def save_load(option, files, tmp_path):
    ref = reference(option, files)
    path = tmp_path / "m.skpadim"
    ref.save(path)
    module = OPTIONS[option].get("backbone")
    loaded = PadimDetector.load(path, backbone=module)
    assert_same_fit(loaded, ref)
    assert_same_predictions(loaded, ref, files[1])


def resumed(option, files, tmp_path):
    ref = reference(option, files)
    with _quiet():
        first = PadimDetector(**{**BASE, **OPTIONS[option]}).fit(files[0][:12])
    first.save(tmp_path / "m.skpadim")
    loaded = PadimDetector.load(tmp_path / "m.skpadim", backbone=OPTIONS[option].get("backbone"))
    with _quiet():
        loaded.partial_fit(files[0][12:])
    assert_same_fit(loaded, ref)
    assert_same_predictions(loaded, ref, files[1])


def exported(option, files, tmp_path):
    pytest.importorskip("onnxruntime")
    from skpadim.export import to_onnx
    from skpadim.runtime import load

    ref = reference(option, files)
    runtime = load(to_onnx(ref, tmp_path / "m.onnx"), batch_size=5)
    assert runtime.fitted_params_ == ref.fitted_params_
    assert_same_predictions(runtime, ref, files[1] + files[0][:3])


def cluster_fit(option, files, client):
    from skpadim import distributed as skd

    ref = reference(option, files)
    with _quiet():
        det = skd.fit(PadimDetector(**{**BASE, **OPTIONS[option]}), files[0], client=client,
                      partition_size=11, position_blocks=3)
    assert_same_fit(det, ref)
    assert_same_predictions(det, ref, files[1])


def cluster_scoring(option, files, client):
    from skpadim import distributed as skd

    ref = reference(option, files)
    np.testing.assert_allclose(skd.score_samples(ref, files[1], client=client, partition_size=2),
                               ref.score_samples(files[1]), rtol=1e-6)
    results = list(skd.score_files(ref, files[1], client=client, with_maps=True, with_regions=True,
                                   partition_size=2))
    maps, scores = ref.anomaly_map(files[1], return_scores=True)
    for r, m in zip(results, maps):
        np.testing.assert_allclose(r.map, m, rtol=1e-5, atol=1e-5 * float(np.abs(m).max()))
    settings = _regions.settings_of(ref)
    assert [r.regions for r in results] == [_regions.localize(r.map, -r.score, settings)[1] for r in results]
    assert_close_regions([r.regions for r in results], [_regions.localize(m, s, settings)[1]
                                                        for m, s in zip(maps, scores)])


def threads(option, files):
    ref = reference(option, files)
    images = files[1] + files[0][:6]
    serial = {k: ref.anomaly_map(images[k:], return_scores=True) for k in range(3)}
    results, errors = {}, []

    def work(k):
        try:
            results[k] = ref.anomaly_map(images[k % 3 :], return_scores=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    assert len(results) == 4
    for k, (maps, scores) in results.items():  # the serial results of the same calls, bit for bit
        expected_maps, expected = serial[k % 3]
        np.testing.assert_array_equal(scores, expected)
        for m, e in zip(maps, expected_maps):
            np.testing.assert_array_equal(m, e)


# ------------------------------------------------------------------ the matrix


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


def _marks(path):
    return {"export + runtime": [pytest.mark.onnx], "cluster fit": [pytest.mark.dask],
            "cluster scoring": [pytest.mark.dask]}.get(path, [])


@pytest.mark.parametrize("path", [pytest.param(p, marks=_marks(p)) for p in PATHS])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_on_every_path(option, path, files, tmp_path, request):
    if path == "save/load":
        save_load(option, files, tmp_path)
    elif path == "partial_fit after load":
        resumed(option, files, tmp_path)
    elif path == "export + runtime":
        exported(option, files, tmp_path)
    elif path == "threads":
        threads(option, files)
    else:
        cluster = request.getfixturevalue("client")
        (cluster_fit if path == "cluster fit" else cluster_scoring)(option, files, cluster)
