"""The fitted state: resumed training after every way of storing it, merging, truncation.

More images than the calibration sample holds (64) and than the update
buffer holds (64), so that resuming exercises the full sample.
"""

import copy
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from skpadim import PadimDetector
from skpadim._engine import fitting
from skpadim._engine.calibration import CAPACITY, CalibrationSample
from skpadim._engine.finish import FitOptions, finish
from skpadim._engine.images import check_images
from skpadim._engine.state import FittedState

from conftest import SMALL, textured

P = {**SMALL, "batch_size": 16}
X = textured(140, seed=50)
FIRST, MORE = X[:110], X[110:]
TEST = textured(6, seed=51)


def _save_load(det, tmp_path):
    path = tmp_path / "det.skpadim"
    det.save(path)
    return PadimDetector.load(path)


ROUTES = {
    "pickle": lambda det, tmp: pickle.loads(pickle.dumps(det)),
    "deepcopy": lambda det, tmp: copy.deepcopy(det),
    "save/load": _save_load,
}


@pytest.fixture(scope="module")
def whole():
    return PadimDetector(**P).fit(X)


@pytest.fixture(scope="module")
def first():
    return PadimDetector(**P).fit(FIRST)


def _assert_same_sample(a, b):
    np.testing.assert_array_equal(a.keys, b.keys)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert len(a.items) == len(b.items)
    for x, y in zip(a.items, b.items):
        for s, t in zip(x, y):
            if s.device.type == "cpu":  # the same image's features, whatever batch it came in
                assert torch.equal(s, t)
            else:  # a GPU's convolutions may depend on the batch they run in (cuDNN's choice)
                torch.testing.assert_close(s, t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("route", list(ROUTES))
def test_stored_detectors_keep_their_whole_state(first, route, tmp_path):
    copied = ROUTES[route](first, tmp_path)
    a, b = first._state, copied._state
    assert len(a.sample) == CAPACITY and a.n == len(FIRST)
    _assert_same_sample(a.sample, b.sample)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    np.testing.assert_array_equal(copied.precision_, first.precision_)
    np.testing.assert_array_equal(copied.mean_, first.mean_)
    np.testing.assert_array_equal(copied.calibration_scores_, first.calibration_scores_)
    np.testing.assert_array_equal(copied.score_samples(TEST), first.score_samples(TEST))
    assert copied.offset_ == first.offset_
    for k, v in a.to_arrays()[0].items():
        np.testing.assert_array_equal(b.to_arrays()[0][k], v, err_msg=k)


@pytest.mark.parametrize("route", list(ROUTES))
def test_resumed_training_equals_one_fit(first, whole, route, tmp_path):
    resumed = ROUTES[route](first, tmp_path).partial_fit(MORE)
    assert resumed.n_samples_seen_ == len(X)
    # The same calibration images, drawn by the same keys, as one fit on all images ...
    _assert_same_sample(resumed._state.sample, whole._state.sample)
    assert resumed._state.rng.bit_generator.state == whole._state.rng.bit_generator.state
    # ... and the same statistics and scores, up to the order of float sums.
    np.testing.assert_allclose(resumed.mean_, whole.mean_, rtol=1e-6, atol=1e-6)
    scale = np.abs(whole.precision_).max()
    np.testing.assert_allclose(resumed.precision_, whole.precision_, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(resumed.calibration_scores_, whole.calibration_scores_, rtol=1e-4)
    assert resumed.offset_ == pytest.approx(whole.offset_, rel=1e-4)
    np.testing.assert_allclose(resumed.score_samples(TEST), whole.score_samples(TEST), rtol=1e-4)
    assert first.n_samples_seen_ == len(FIRST)  # the stored detector was not touched


def test_every_route_resumes_identically(first, tmp_path):
    results = [ROUTES[r](first, tmp_path).partial_fit(MORE) for r in ROUTES]
    for other in results[1:]:
        np.testing.assert_array_equal(other.precision_, results[0].precision_)
        np.testing.assert_array_equal(other.calibration_scores_, results[0].calibration_scores_)


def test_a_loaded_detector_with_a_changed_contamination_resumes(first, tmp_path):
    loaded = ROUTES["save/load"](first, tmp_path)
    loaded.set_params(contamination=0.25, epsilon=0.05)  # not part of the embedding
    loaded.partial_fit(MORE)
    assert loaded.offset_ == pytest.approx(np.percentile(loaded.calibration_scores_, 25, method="weibull"))
    assert loaded._state.epsilon == 0.05


# ----------------------------------------------------------------- merging


def _params():
    return SimpleNamespace(**PadimDetector(**P).get_params())


def _finished(state, params):
    """``state``'s images through the one end of fit."""
    return finish(state, state.stats, state.sample, state.rng, FitOptions.of(params))


def _partition(empty, images, rng):
    start = empty.replaced(None, CalibrationSample(), rng)
    return fitting.extend(start, check_images(images), _params())


def test_merged_partitions_equal_one_fit():
    """Two partitions fitted apart (independent keys) merge into the statistics of one pass."""
    params = _params()
    images = check_images(X)
    empty = fitting.start(params, images)
    a = _partition(empty, X[:70], np.random.default_rng(1))
    b = _partition(empty, X[70:], np.random.default_rng(2))
    merged = _finished(a.merged(b), params)
    whole = fitting.extend(empty, images, params)
    assert merged.n == len(X) and a.n == 70 and b.n == 70  # the inputs are left as they were
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-6, atol=1e-6)
    scale = np.abs(whole.precision).max()
    np.testing.assert_allclose(merged.precision, whole.precision, rtol=1e-4, atol=1e-4 * scale)
    keys = np.concatenate([a.sample.keys, b.sample.keys])
    np.testing.assert_array_equal(merged.sample.keys, np.sort(keys)[:CAPACITY])
    ids = np.concatenate([a.sample.ids, b.sample.ids + 70])
    np.testing.assert_array_equal(merged.sample.ids, ids[np.argsort(keys, kind="stable")][:CAPACITY])
    assert len(merged.calibration) == len(X) // 5 and np.isfinite(merged.offset)


def test_merging_with_continued_keys_equals_one_stream():
    """The second partition drawing the keys one stream would have drawn: the same sample."""
    params = _params()
    images = check_images(X)
    empty = fitting.start(params, images)
    a = fitting.extend(empty, check_images(X[:70]), params)
    b = _partition(empty, X[70:], copy.deepcopy(a.rng))
    merged = _finished(a.merged(b), params)
    whole = fitting.extend(empty, images, params)
    _assert_same_sample(merged.sample, whole.sample)
    np.testing.assert_allclose(merged.calibration, whole.calibration, rtol=1e-4)


def test_partitions_with_keys_drawn_in_advance_equal_one_stream():
    """Keys drawn for all images at once, in input order, then handed to uneven
    partitions (as a distributed fit does): the very sample and generator of one pass."""
    params = _params()
    images = check_images(X)
    empty = fitting.start(params, images)
    rng = copy.deepcopy(empty.rng)
    keys = rng.random(len(X))
    parts = []
    for a, b in ((0, 37), (37, 101), (101, len(X))):
        given = iter(np.split(keys[a:b], np.arange(params.batch_size, b - a, params.batch_size)))
        stats, sample = fitting.accumulate(empty, check_images(X[a:b]), params, lambda B: next(given))
        parts.append(empty.replaced(stats, sample, rng))
    merged = parts[0].merged(parts[1]).merged(parts[2])
    merged = _finished(merged, params)
    whole = fitting.extend(empty, images, params)
    _assert_same_sample(merged.sample, whole.sample)
    assert merged.rng.bit_generator.state == whole.rng.bit_generator.state
    np.testing.assert_allclose(merged.calibration, whole.calibration, rtol=1e-4)
    assert merged.offset == pytest.approx(whole.offset, rel=1e-4)


def test_partial_states_round_trip_through_arrays():
    """Unfinalized states (what partitions would send back) go through arrays too."""
    params = _params()
    empty = fitting.start(params, check_images(X[:4]))
    part = _partition(empty, X[:20], np.random.default_rng(3))
    part = part.replaced(part.stats, part.sample, part.rng)  # drop the finalized part
    for state in (empty, part):
        arrays, meta = state.to_arrays()
        back = FittedState.from_arrays(arrays, meta, device=torch.device("cpu"))
        assert back.n == state.n and not back.fitted
        again = back.to_arrays()
        assert again[1] == meta
        for k, v in arrays.items():
            np.testing.assert_array_equal(again[0][k], v, err_msg=k)
    with pytest.raises(ValueError, match="different embeddings"):
        other = fitting.start(SimpleNamespace(**{**vars(params), "random_state": 1}), check_images(X[:4]))
        part.merged(other)


# -------------------------------------------------------------- truncation


def test_the_backbone_keeps_only_what_runs(first):
    keys = list(first.backbone_.state_dict())
    assert keys and not [k for k in keys if k.startswith(("layer4", "fc"))]
    assert any(k.startswith("layer3") for k in keys)
    with pytest.raises(RuntimeError, match=r"The module 'layer4' of this backbone was removed.*'layer3'"):
        with torch.no_grad():
            first.backbone_(torch.zeros(1, 3, 32, 32, device=first.device_))


def test_unpickling_does_not_factorize(first, monkeypatch):
    blob = pickle.dumps(first)

    def refuse(*args, **kwargs):
        raise AssertionError("a Cholesky factorization ran at load")

    monkeypatch.setattr(torch.linalg, "cholesky_ex", refuse)
    np.testing.assert_array_equal(pickle.loads(blob).precision_, first.precision_)


def test_a_pickle_without_newer_parameters_takes_their_defaults():
    det = PadimDetector(**SMALL).fit(textured(12, seed=3))
    X = textured(3, seed=4)
    old = det.__getstate__()
    for name in ("covariance", "tile_size", "tile_stride", "tile_sharing", "backbone_dtype"):
        del old[name]  # as in a pickle from before these parameters
    back = PadimDetector.__new__(PadimDetector)
    back.__setstate__(old)
    assert back.get_params() == PadimDetector(**SMALL).get_params()
    np.testing.assert_array_equal(back.score_samples(X), det.score_samples(X))
