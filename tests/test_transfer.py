"""The GPU paths, run on the CPU: staged copies, results gathered per batch, batch_size="auto",
weights cast once, random weights drawn once.

What a CUDA device does differently here is pinning memory and using
streams; the rest of the logic (buffers taken in turn, copies into
preallocated arrays piece by piece, a batch copied ahead of the one that is
computed) runs on the CPU with ``transfer.STAGED`` including ``"cpu"``, and
must give the very results of the direct path.
"""

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

import skpadim._engine.backbone as backbone_module
import skpadim._engine.embedder as embedder_module
import skpadim._engine.memory as memory
import skpadim._engine.transfer as transfer
from skpadim import PadimDetector
from skpadim._engine.gaussian import GaussianStats, _Failures
from skpadim._engine.images import ImageSet, check_images

from conftest import SMALL, textured

CPU = {**SMALL, "device": "cpu", "batch_size": 4}


@pytest.fixture(scope="module")
def data():
    X = textured(20, seed=70)
    X_test = textured(9, seed=71)
    X_test[:3, 6:12, 8:14] = 255
    return X, X_test


def _outputs(det, X_test):
    """Everything a fitted detector gives, for images of several sizes and forms."""
    big = textured(5, size=40, seed=72)
    out = {"precision": det.precision_, "mean": det.mean_, "calibration": det.calibration_scores_,
           "scores": det.score_samples(X_test), "decision": det.decision_function(X_test),
           "labels": det.predict(X_test), "maps": det.anomaly_map(X_test),
           "maps list one size": det.anomaly_map(list(X_test[:3]))}
    if det.image_size is not None:  # a native-size model takes only its own size in arrays
        out["maps other size"] = det.anomaly_map(big)
        out["float maps"] = det.anomaly_map(X_test.astype(np.float64) / 255)
    maps, scores = det.anomaly_map([big[0], X_test[0], big[1]], return_scores=True)
    out.update({f"maps mixed {i}": m for i, m in enumerate(maps)}, **{"mixed scores": scores})
    return out


@pytest.mark.parametrize("params", [
    {},
    {"tile_size": 16, "tile_stride": 8},
    {"image_size": None, "tile_size": 16},
    {"shift_tolerance": 1, "image_score": 0.05},
], ids=["plain", "tiles", "native shared tiles", "shift tolerance"])
def test_staged_copies_give_the_direct_results(data, monkeypatch, params):
    """The CUDA code path minus pinning and streams: bit for bit the CPU's own results,
    with pieces far smaller than a batch (the ring of buffers reused within one put)."""
    X, X_test = data
    expected = _outputs(PadimDetector(**{**CPU, **params}).fit(X), X_test)
    monkeypatch.setattr(transfer, "STAGED", {"cpu", "cuda"})
    monkeypatch.setattr(transfer, "PIECE_BYTES", 1024)
    got = _outputs(PadimDetector(**{**CPU, **params}).fit(X), X_test)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_staged_copies_off_cuda_use_no_pinned_memory_nor_streams(data, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a CUDA stream or pinned memory off CUDA")

    monkeypatch.setattr(torch.cuda, "Stream", refuse)
    monkeypatch.setattr(torch.cuda, "current_stream", refuse)
    for kind in (transfer.Staging, transfer.HostSink):
        for staged in (None, True):
            obj = kind("cpu", staged=staged)
            assert not obj.pin and obj.stream is None
    real_empty = torch.empty

    def empty(*args, pin_memory=False, **kwargs):
        assert not pin_memory, "pinned memory off CUDA"
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(transfer, "STAGED", {"cpu", "cuda"})
    X, X_test = data
    PadimDetector(**CPU).fit(X[:8]).anomaly_map(X_test)
    assert transfer.uses_streams("cuda") and not transfer.uses_streams("cpu")


def test_staging_packs_batches_of_any_sizes_and_dtypes():
    staging = transfer.Staging("cpu", staged=True)
    rng = np.random.default_rng(0)
    readonly = rng.random((5, 4, 3))
    readonly.flags.writeable = False
    batches = [
        rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8),  # an array batch
        [rng.integers(0, 255, (6, 5, 1), dtype=np.uint8), rng.random((2, 3, 3)).astype(np.float32),
         readonly, rng.random((4, 4, 3)).astype(">f8"), rng.integers(0, 255, (7, 9, 4), dtype=np.uint8)],
        rng.integers(0, 255, (9, 16, 16, 3), dtype=np.uint8),  # larger: a new buffer
        [rng.random((1, 1, 1)).astype(np.float16)],
    ]
    tickets = [staging.send(b) for b in batches]  # more batches in flight than buffers
    for batch, ticket in zip(batches, tickets):
        got = staging.receive(ticket)
        if isinstance(batch, np.ndarray):
            assert torch.equal(got, torch.from_numpy(batch))
            continue
        assert len(got) == len(batch)
        for g, b in zip(got, batch):
            want = torch.from_numpy(b.astype(np.float32) if b.dtype.byteorder == ">" else np.array(b))
            assert g.dtype == want.dtype and torch.equal(g, want)


def test_staging_buffers_are_reused_once_their_copy_is_done():
    staging = transfer.Staging("cpu", staged=True)
    X = np.zeros((4, 8, 8, 3), np.uint8)
    for _ in range(5):
        staging.send(X)
    held = {id(b[0]) for b in staging._buffers}
    assert len(held) == transfer.Staging.BUFFERS  # two buffers, taken in turn, never more


def test_host_sink_copies_every_piece_by_finish():
    sink = transfer.HostSink("cpu", staged=True, piece_bytes=64, slots=3)
    rng = np.random.default_rng(1)
    sources = [torch.from_numpy(rng.random(n).astype(np.float32)) for n in (5, 40, 16, 1, 100)]
    outs = [np.full(len(s), np.nan, np.float32) for s in sources]
    for out, src in zip(outs, sources):
        sink.put(out, src)
    sink.finish()
    for out, src in zip(outs, sources):
        np.testing.assert_array_equal(out, src.numpy())
    with pytest.raises(ValueError, match="cannot copy"):
        sink.put(np.empty(3, np.float32), torch.zeros(4))
    with pytest.raises(ValueError, match="cannot copy torch.float64"):
        sink.put(np.empty(4, np.float32), torch.zeros(4, dtype=torch.float64))


def test_ahead_hands_out_in_order_and_raises_in_turn():
    sent, seen = [], []

    def items():
        yield 1
        yield 2
        raise OSError("third item")

    gen = transfer.ahead(items(), lambda i: sent.append(i) or i * 10)
    seen.append(next(gen))
    assert sent == [1, 2]  # the second was sent before the first was handed out
    seen.append(next(gen))
    with pytest.raises(OSError, match="third item"):  # only once the first two were handled
        next(gen)
    assert seen == [(1, 10), (2, 20)]


def test_one_copy_per_batch_not_per_image(data, monkeypatch):
    X, X_test = data
    det = PadimDetector(**CPU).fit(X)
    monkeypatch.setattr(transfer, "STAGED", {"cpu", "cuda"})
    puts = []
    put = transfer.HostSink.put
    monkeypatch.setattr(transfer.HostSink, "put", lambda self, dst, src: puts.append(len(dst)) or put(self, dst, src))
    det.anomaly_map(X_test)  # 9 images in batches of 4
    assert puts == [4, 4, 1]
    puts.clear()
    det.anomaly_map(list(textured(5, size=40, seed=3)))
    assert len(puts) == 2


def test_precision_reaches_its_numpy_array_as_it_is_computed(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(13, 6, 20, generator=g)
    s = GaussianStats.empty(13, 6, "cpu")
    s.update(x.clone())
    expected = s.precision(0.01)
    host = np.full((13, 6, 6), np.nan, np.float32)
    assert torch.equal(s.precision(0.01, host=host), expected)
    np.testing.assert_array_equal(host, expected.numpy())
    monkeypatch.setattr(transfer, "STAGED", {"cpu", "cuda"})  # through staging buffers, chunk by chunk
    monkeypatch.setattr(transfer, "PIECE_BYTES", 100)
    monkeypatch.setattr("skpadim._engine.gaussian._chunk_size", lambda d, device, itemsize=8, budget=None: 2)
    host[:] = np.nan
    assert torch.equal(s.precision(0.01, host=host), expected)
    np.testing.assert_array_equal(host, expected.numpy())


def test_cholesky_failures_are_gathered_off_the_cpu_and_raised_once():
    failures = _Failures(torch.device("cuda"), 0.5)  # no CUDA needed: nothing runs there
    failures.add(torch.tensor([0, 0], dtype=torch.int32))
    failures.check()
    failures.add(torch.tensor([0, 3], dtype=torch.int32))
    failures.add(torch.tensor([0, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"not positive definite.*epsilon=0.5"):
        failures.check()
    with pytest.raises(ValueError, match="not positive definite"):  # on a CPU at once
        _Failures("cpu", 0.5).add(torch.tensor([2], dtype=torch.int32))


# ------------------------------------------------------------- batch_size="auto"


def test_batch_size_auto_is_the_default_and_32_on_a_cpu(data):
    X, X_test = data
    assert PadimDetector().batch_size == "auto"
    auto = PadimDetector(**{**CPU, "batch_size": "auto"}).fit(X)
    fixed = PadimDetector(**{**CPU, "batch_size": 32}).fit(X)
    assert memory.resolve_batch_size("auto", auto._state) == auto.batch_size_ == 32
    np.testing.assert_array_equal(auto.precision_, fixed.precision_)
    np.testing.assert_array_equal(auto.anomaly_map(X_test), fixed.anomaly_map(X_test))
    assert fixed.set_params(batch_size=5).batch_size_ == 5  # what the next call uses


@pytest.mark.parametrize("value", ["big", "Auto", 0, 2.5, True, None])
def test_batch_size_is_validated(data, value):
    with pytest.raises(InvalidParameterError,
                       match=r"The 'batch_size' parameter of PadimDetector must be a str among \{'auto'\} or "
                             r"an int in the range \[1, inf\)"):
        PadimDetector(**{**CPU, "batch_size": value}).fit(data[0][:4])


def test_batch_size_auto_on_a_gpu_fits_its_free_memory(data, monkeypatch):
    """The rule, with the device's free memory given (no GPU needed)."""
    gpu = torch.device("cuda")
    per = 20 << 20  # bytes per image
    assert memory.auto_batch_size(gpu, per, available=200 << 30) == memory.AUTO_BATCH_MAX == 256
    assert memory.auto_batch_size(gpu, 70 << 20, available=200 << 30) == 64  # the 8 GiB bound
    assert memory.auto_batch_size(gpu, per, available=4 << 30) == 32  # a quarter of 4 GiB: 51 -> 32
    assert memory.auto_batch_size(gpu, per, available=1 << 20) == 1
    assert memory.auto_batch_size("cpu", per, available=1 << 20) == memory.AUTO_BATCH == 32
    state = PadimDetector(**CPU).fit(data[0][:4])._state
    on_gpu = SimpleNamespace(device=gpu, layout=state.layout, spec=state.spec, shape=state.shape)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 40 * memory.batch_bytes(state))
    assert memory.resolve_batch_size("auto", on_gpu) == 8  # 10 images' worth: 8
    assert memory.resolve_batch_size(7, on_gpu) == 7  # an int is honoured
    assert memory.resolve_batch_size(np.int64(3), state) == 3


def test_an_explicit_batch_size_is_honoured(data, monkeypatch):
    X, X_test = data
    sizes = []
    batches = ImageSet.host_batches
    monkeypatch.setattr(ImageSet, "host_batches", lambda self, n: sizes.append(n) or batches(self, n))
    det = PadimDetector(**{**CPU, "batch_size": 5}).fit(X)
    det.score_samples(X_test)
    det.set_params(batch_size="auto").anomaly_map(X_test)
    assert sizes == [5, 5, 32]


def test_batch_size_auto_is_saved_and_loaded(data, tmp_path):
    X, X_test = data
    det = PadimDetector(**{**CPU, "batch_size": "auto"}).fit(X)
    det.save(tmp_path / "m.skpadim")
    for back in (PadimDetector.load(tmp_path / "m.skpadim"), pickle.loads(pickle.dumps(det))):
        assert back.batch_size == "auto"
        np.testing.assert_array_equal(back.score_samples(X_test), det.score_samples(X_test))


def test_out_of_memory_before_auto_is_resolved_suggests_an_int():
    from skpadim.exceptions import DeviceOutOfMemoryError

    with pytest.raises(DeviceOutOfMemoryError, match=r"batch_size='auto' images.*e.g. batch_size=32"):
        with memory.OutOfMemoryHint("cuda", "auto", (32, 32), 20):
            raise torch.OutOfMemoryError("CUDA out of memory")


# ------------------------------------------------------- weights, and their dtype


def test_reduced_precision_weights_cast_once_give_autocasts_results(data, monkeypatch):
    """What a GPU does (the weights of the forward pass's copy cast once), on the CPU."""
    X, X_test = data
    monkeypatch.setattr("skpadim._engine.dtypes._cpu_native", lambda dtype: True)  # no warning
    params = {**CPU, "backbone_dtype": "bfloat16"}
    autocast = PadimDetector(**params).fit(X[:8])
    monkeypatch.setattr(embedder_module, "PRECAST", {"cpu", "cuda"})
    cast = PadimDetector(**params).fit(X[:8])
    weights = cast._state.embedder._runner[0].model.conv1.weight
    assert weights.dtype == torch.bfloat16 and cast.backbone_.conv1.weight.dtype == torch.float32
    np.testing.assert_array_equal(cast.anomaly_map(X_test), autocast.anomaly_map(X_test))
    np.testing.assert_array_equal(cast.precision_, autocast.precision_)


def test_random_weights_are_drawn_once_and_copied(monkeypatch):
    monkeypatch.setattr(backbone_module, "_RANDOM", type(backbone_module._RANDOM)())
    before = torch.random.get_rng_state()
    a = backbone_module.random_model("resnet18", 7)
    b = backbone_module.random_model("resnet18", 7)
    assert torch.equal(torch.random.get_rng_state(), before)  # torch's random state untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        import torchvision

        drawn = torchvision.models.resnet18()
    for model in (a, b):
        got = model.state_dict()
        assert got.keys() == drawn.state_dict().keys()
        assert all(torch.equal(v, got[k]) for k, v in drawn.state_dict().items())
    a.conv1.weight.data.zero_()  # a copy of its own: the next one is untouched
    assert torch.equal(backbone_module.random_model("resnet18", 7).conv1.weight, drawn.conv1.weight)
    assert len(backbone_module._RANDOM) == 1
    for seed in (8, 9, 10):
        backbone_module.random_model("resnet18", seed)
    assert list(backbone_module._RANDOM) == [("resnet18", 9), ("resnet18", 10)]


def test_random_weights_built_on_the_device_equal_the_drawn_ones(monkeypatch):
    """The path of a GPU (the module built empty where it runs, then loaded), on the CPU."""
    drawn = backbone_module._drawn("resnet18", 11)
    built = backbone_module._built_on("resnet18", drawn, torch.device("cpu"))
    assert built is not None and built is not drawn
    assert all(torch.equal(v, built.state_dict()[k]) for k, v in drawn.state_dict().items())
    assert built.state_dict().keys() == drawn.state_dict().keys()
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(built.parameters(), drawn.parameters()))
