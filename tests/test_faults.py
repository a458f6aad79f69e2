"""Faults: interrupted partial_fit, tiny training sets, memory checks and out of memory."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError

from skpadim import PadimDetector
from skpadim._engine.embedding import PatchEmbedding
from skpadim._engine.gaussian import GaussianStats

from conftest import SMALL, textured

P = {**SMALL, "batch_size": 2}
A = textured(6, seed=20)
B = textured(5, seed=21)


def _snapshot(det):
    s = det._state
    return {
        "state": s,
        "mean_": det.mean_.copy(),
        "precision_": det.precision_.copy(),
        "n_samples_seen_": det.n_samples_seen_,
        "offset_": det.offset_,
        "stats": (s.stats.n, s.stats.shift.clone(), s.stats.total.clone(), s.stats.outer.clone()),
        "sample": (s.sample.keys.copy(), s.sample.ids.copy(), len(s.sample.items)),
        "rng": s.rng.bit_generator.state,
    }


def _assert_same(a, b):
    assert a["state"] is b["state"]  # the detector still holds the same, untouched, state
    np.testing.assert_array_equal(a["mean_"], b["mean_"])
    np.testing.assert_array_equal(a["precision_"], b["precision_"])
    assert a["n_samples_seen_"] == b["n_samples_seen_"] and a["offset_"] == b["offset_"]
    assert a["stats"][0] == b["stats"][0]
    for x, y in zip(a["stats"][1:], b["stats"][1:]):
        assert torch.equal(x, y)
    np.testing.assert_array_equal(a["sample"][0], b["sample"][0])
    np.testing.assert_array_equal(a["sample"][1], b["sample"][1])
    assert a["sample"][2] == b["sample"][2]
    assert a["rng"] == b["rng"]


@pytest.fixture(scope="module")
def uninterrupted():
    """fit(A) then partial_fit(B), fit(A + B) in one go, and fit(A)."""
    det = PadimDetector(**P).fit(A).partial_fit(B)
    whole = PadimDetector(**P).fit(np.concatenate([A, B]))
    return det, whole, PadimDetector(**P).fit(A)


def _check_recovered(det, uninterrupted):
    det.partial_fit(B)
    expected, whole, _ = uninterrupted
    # Bit for bit what an uninterrupted partial_fit gives ...
    np.testing.assert_array_equal(det.mean_, expected.mean_)
    np.testing.assert_array_equal(det.precision_, expected.precision_)
    assert det.offset_ == expected.offset_ and det.n_samples_seen_ == len(A) + len(B)
    # ... and the statistics of one fit on every image.
    np.testing.assert_allclose(det.mean_, whole.mean_, rtol=1e-6, atol=1e-6)
    scale = np.abs(whole.precision_).max()
    np.testing.assert_allclose(det.precision_, whole.precision_, rtol=1e-4, atol=1e-4 * scale)
    assert det.offset_ == pytest.approx(whole.offset_, rel=1e-4)


def _files(tmp_path, images, corrupt=None):
    paths = []
    for i, img in enumerate(images):
        path = tmp_path / f"{i}.png"
        Image.fromarray(img).save(path)
        if i == corrupt:
            path.write_bytes(path.read_bytes()[:60])
        paths.append(str(path))
    return paths


def test_partial_fit_with_a_corrupt_file_keeps_the_state(tmp_path, uninterrupted):
    det = PadimDetector(**P).fit(A)
    before = _snapshot(det)
    paths = _files(tmp_path, B, corrupt=2)  # the 3rd file: in the 2nd batch of 2
    with pytest.raises(ValueError, match=r"X\[2\]: could not read image file '.*2.png'"):
        det.partial_fit(paths)
    _assert_same(_snapshot(det), before)
    _check_recovered(det, uninterrupted)


def _InterruptOnCall(fn, call, exc):
    """``fn`` that raises ``exc`` on its ``call``-th call (a function: binds as a method)."""

    def wrapper(*args, **kwargs):
        wrapper.n += 1
        if wrapper.n == call:
            raise exc
        return fn(*args, **kwargs)

    wrapper.n = 0
    return wrapper


def test_keyboard_interrupt_in_the_second_batch_keeps_the_state(monkeypatch, uninterrupted):
    det = PadimDetector(**P).fit(A)
    before = _snapshot(det)
    forward = _InterruptOnCall(det._state.embedder.forward, 2, KeyboardInterrupt())
    monkeypatch.setattr(det._state.embedder, "forward", forward)
    with pytest.raises(KeyboardInterrupt):
        det.partial_fit(B)
    assert forward.n == 2
    monkeypatch.undo()
    _assert_same(_snapshot(det), before)
    _check_recovered(det, uninterrupted)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")])
def test_interrupt_after_the_merge_keeps_the_state(monkeypatch, uninterrupted, exc):
    """The old statistics are merged before the precision is formed: that must not touch them."""
    det = PadimDetector(**P).fit(A)
    before = _snapshot(det)
    monkeypatch.setattr(GaussianStats, "precision", _InterruptOnCall(None, 1, exc))
    with pytest.raises(type(exc)):
        det.partial_fit(B)
    monkeypatch.undo()
    _assert_same(_snapshot(det), before)
    _check_recovered(det, uninterrupted)


def test_changed_epsilon_does_not_leak_from_a_failed_call(tmp_path):
    det = PadimDetector(**P).fit(A)
    before = det.score_samples(B[:2])
    det.set_params(epsilon=1.0, sigma=0.0)
    with pytest.raises(ValueError, match="could not read"):
        det.partial_fit(_files(tmp_path, B[:3], corrupt=2))
    np.testing.assert_array_equal(det.score_samples(B[:2]), before)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), ValueError("bad batch")])
def test_failing_first_call_leaves_the_detector_unfitted(monkeypatch, uninterrupted, exc):
    det = PadimDetector(**P)
    monkeypatch.setattr(PatchEmbedding, "__call__", _InterruptOnCall(PatchEmbedding.__call__, 2, exc))
    with pytest.raises(type(exc)):
        det.partial_fit(A)
    monkeypatch.undo()
    with pytest.raises(NotFittedError):
        det.score_samples(A)
    assert not [k for k in vars(det) if k.endswith("_") or k == "_stats"]
    fresh = uninterrupted[2]
    np.testing.assert_array_equal(det.partial_fit(A).precision_, fresh.precision_)


def test_failing_first_call_on_files(tmp_path):
    det = PadimDetector(**P)
    with pytest.raises(ValueError, match=r"X\[2\]: could not read image file"):
        det.partial_fit(_files(tmp_path, A[:4], corrupt=2))
    with pytest.raises(NotFittedError):
        det.predict(A)


# ------------------------------------------------------ tiny training sets


@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_training_sets_give_finite_scores(n):
    det = PadimDetector(**SMALL).fit(textured(n, seed=30))
    assert n < det.mean_.shape[1]  # fewer images than features
    assert np.all(np.isfinite(det.mean_)) and np.all(np.isfinite(det.precision_))
    test = textured(3, seed=31)
    assert np.all(np.isfinite(det.score_samples(test))) and np.isfinite(det.offset_)
    assert np.all(np.isfinite(det.anomaly_map(test)))
    assert set(det.predict(test).tolist()) <= {-1, 1}
    if n == 1:  # isotropic Gaussian: covariance epsilon * I
        eye = np.broadcast_to(np.eye(det.mean_.shape[1]) / det.epsilon, det.precision_.shape)
        np.testing.assert_allclose(det.precision_, eye, rtol=1e-5)


# ------------------------------------------------------------ out of memory


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_in_fit_names_batch_size(monkeypatch):
    det = PadimDetector(**SMALL)
    monkeypatch.setattr(PatchEmbedding, "__call__", _oom)
    with pytest.raises(MemoryError, match=r"batch_size=4 images .*image_size=32.*n_features=20.*smaller batch_size, e.g. batch_size=2") as info:
        det.fit(A)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert "CUDA out of memory" in str(info.value)
    monkeypatch.undo()
    with pytest.raises(NotFittedError):
        det.predict(A)


@pytest.mark.parametrize("method", ["score_samples", "anomaly_map", "predict"])
def test_out_of_memory_in_predict_names_batch_size(monkeypatch, uninterrupted, method):
    det = uninterrupted[2]
    monkeypatch.setattr(det, "batch_size", 7)
    monkeypatch.setattr("skpadim._engine.inference.mahalanobis", _oom)
    with pytest.raises(MemoryError, match=r"batch_size=7 images.*batch_size=3"):
        getattr(det, method)(B)


def test_other_errors_are_not_disguised(monkeypatch):
    det = PadimDetector(**SMALL)
    monkeypatch.setattr(PatchEmbedding, "__call__", lambda *a: (_ for _ in ()).throw(RuntimeError("shape bug")))
    with pytest.raises(RuntimeError, match="shape bug"):
        det.fit(A)


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
])
def test_out_of_memory_at_the_end_of_fit_does_not_blame_batch_size(monkeypatch, error):
    det = PadimDetector(**SMALL)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(GaussianStats, "precision", fail)
    with pytest.raises(MemoryError, match=r"at the end of fit.*n_features=20.*batch_size does not change") as info:
        det.fit(A)
    assert "smaller batch_size" not in str(info.value)
    assert info.value.__cause__ is error


# ------------------------------------------------------------ memory checks


def _available(monkeypatch, n_bytes):
    monkeypatch.setattr("skpadim._engine.memory.available_bytes", lambda device: n_bytes)


def _need(det_or_none=None):
    from skpadim._engine.memory import fit_call_bytes

    det = det_or_none or PadimDetector(**SMALL).fit(A[:2])
    return fit_call_bytes(*det.mean_.shape, det._state.layout.kept_item_bytes())


def test_memory_check_compares_with_available_memory(monkeypatch):
    need = _need()
    _available(monkeypatch, int(need * 0.5))
    kind = torch.device(SMALL["device"]).type
    with pytest.raises(MemoryError, match=r"n_features=20 with 64 patch positions needs about .* GiB.*"
                                          rf"more than this {kind} device has available.*Lower n_features"):
        PadimDetector(**SMALL).fit(A)


def test_first_fit_warns_when_a_later_partial_fit_would_not_fit(monkeypatch):
    need = _need()
    _available(monkeypatch, int(need * 1.5))
    with pytest.warns(UserWarning, match=r"a later partial_fit on this detector needs as much again"):
        det = PadimDetector(**SMALL).fit(A)
    before = _snapshot(det)
    with pytest.raises(MemoryError, match=r"partial_fit keeps the detector's current statistics "
                                          r"\(\d.* GiB\) in use until the new ones are complete"):
        _available(monkeypatch, int(need * 0.5))
        det.partial_fit(B)
    _assert_same(_snapshot(det), before)
    _available(monkeypatch, 100 * need)
    det.partial_fit(B)  # enough memory again
    assert det.n_samples_seen_ == len(A) + len(B)
