"""The backbone's fast paths: batch normalization folding, channels_last (and their fallback),
backbone_dtype (bfloat16/float16)."""

import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError
import torchvision
from torch import nn

import skpadim._engine.dtypes as dtypes
import skpadim._engine.embedder as embedder_module
from skpadim._engine.fold import fold_batchnorm, foldable_pairs
from conftest import SMALL, textured
from skpadim import PadimDetector

# 70 images: more than the 64-image calibration reservoir and update buffer.
N_FIT = 70


@pytest.fixture(scope="module")
def data():
    X = textured(N_FIT, size=32, seed=3)
    X_test = textured(6, size=32, seed=4)
    X_test[:3, 8:16, 10:20] = 255
    return X, X_test


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _fit(X, **kw):
    return PadimDetector(**{**SMALL, "batch_size": 16, **kw}).fit(X)


def test_channels_last_equals_default_layout(data, monkeypatch):
    X, X_test = data
    fast = _fit(X)
    assert fast._state.embedder.channels_last
    assert fast.backbone_.conv1.weight.is_contiguous()  # the exposed module keeps its layout
    monkeypatch.setattr(embedder_module, "CHANNELS_LAST", set())
    plain = _fit(X)
    assert not plain._state.embedder.channels_last
    assert _rel(fast.anomaly_map(X_test), plain.anomaly_map(X_test)) < 1e-4
    np.testing.assert_allclose(fast.mean_, plain.mean_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast.offset_, plain.offset_, rtol=1e-4)


class _ViewNet(nn.Module):
    """A custom backbone whose forward pass needs a contiguous (NCHW) input."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.a = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.2

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.view(n, c * h * w).view(n, c, h, w)  # fails on a channels_last tensor
        return self.b(torch.relu(self.a(torch.relu(self.stem(x)))))


def test_backbone_failing_in_channels_last_falls_back(data, monkeypatch):
    X, X_test = data
    with pytest.raises(RuntimeError):  # the module really fails in that layout
        _ViewNet()(torch.zeros(1, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    kw = dict(backbone=_ViewNet(), layers=["stem", "a", "b"], n_features=12)
    det = _fit(X, **kw)
    assert not det._state.embedder.channels_last and not det._state.embedder.runs_copy
    assert det.backbone_.stem.weight.is_contiguous()
    maps = det.anomaly_map(X_test)
    # A fresh copy starts on the fast path again; predictions started at once in
    # several threads all fall back and all succeed.
    fresh = pickle.loads(pickle.dumps(det))
    assert fresh._state.embedder.channels_last
    barrier = threading.Barrier(4)

    def predict(_):
        barrier.wait(30)
        return fresh.anomaly_map(X_test)

    for got in _in_threads(4, predict):
        np.testing.assert_array_equal(got, maps)
    assert not fresh._state.embedder.runs_copy
    monkeypatch.setattr(embedder_module, "CHANNELS_LAST", set())
    ref = _fit(X, **kw)
    np.testing.assert_array_equal(maps, ref.anomaly_map(X_test))


def _in_threads(n, fn):
    out, errors = [None] * n, []

    def run(i):
        try:
            out[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return out


def _trained_looking_resnet18():
    """resnet18 with random, seeded weights whose batch normalizations are far from the
    identity (random init leaves them at scale 1, shift 0: folding them would change
    nothing)."""
    g = torch.Generator().manual_seed(5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        net = torchvision.models.resnet18()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.3 * torch.randn(c, generator=g)
            m.running_mean = 0.2 * torch.randn(c, generator=g)
            m.running_var = 0.2 + 2 * torch.rand(c, generator=g)
    return net.eval()


def test_folded_batchnorm_equals_the_module_itself(data, tmp_path, monkeypatch):
    X, X_test = data
    net = _trained_looking_resnet18()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kw = dict(backbone=net, layers=["layer1", "layer2", "layer3"])
    det = _fit(X, **kw)
    emb = det._state.embedder
    assert emb.folded == 15  # stem, 4 in layer1, 5 each in layer2 and layer3 (downsampling)
    assert emb.runs_copy and isinstance(det.backbone_.bn1, nn.BatchNorm2d)
    for k, v in det.backbone_.state_dict().items():  # the exposed module is not folded
        torch.testing.assert_close(v.cpu(), before[k], rtol=0, atol=0)
    monkeypatch.setattr(embedder_module, "FOLD_BATCHNORM", False)
    ref = _fit(X, **kw)
    assert ref._state.embedder.folded == 0
    maps, ref_maps = det.anomaly_map(X_test), ref.anomaly_map(X_test)
    assert 0 < _rel(maps, ref_maps) < 1e-4  # folded indeed, and the same up to rounding
    np.testing.assert_allclose(det.mean_, ref.mean_, rtol=1e-4, atol=1e-5)
    # The saved model holds the module's own weights; loading folds again.
    det.save(tmp_path / "m.skpadim")
    monkeypatch.setattr(embedder_module, "FOLD_BATCHNORM", True)
    loaded = PadimDetector.load(tmp_path / "m.skpadim", backbone=torchvision.models.resnet18())
    assert loaded._state.embedder.folded == 15
    np.testing.assert_array_equal(loaded.anomaly_map(X_test), maps)
    assert set(loaded.backbone_.state_dict()) == set(det.backbone_.state_dict())
    assert "bn1.running_var" in before and "bn1.running_var" in det.backbone_.state_dict()


class _Block(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class _Tricky(nn.Module):
    """Pairs that must not fold: a tapped convolution, a convolution whose output is also
    used past its normalization, and a normalization that uses batch statistics."""

    def __init__(self):
        super().__init__()
        self.a = _Block(3, 8)
        self.b = _Block(8, 8)
        self.b_extra = nn.Conv2d(8, 8, 1)
        self.c = _Block(8, 16)
        self.c.bn = nn.BatchNorm2d(16, track_running_stats=False)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)

    def forward(self, x):
        x = self.a(x)
        y = self.b.conv(x)
        x = torch.relu(self.b.bn(y)) + self.b_extra(y)
        return self.c(x)


def test_only_pairs_that_fold_exactly_are_folded():
    net = _Tricky().eval()
    assert foldable_pairs(net) == [("a.conv", "a.bn")]
    assert foldable_pairs(net, keep=("a.conv",)) == []  # a tapped convolution stays
    folded, n = fold_batchnorm(net, keep=("a.conv",))
    assert n == 0 and isinstance(folded.a.bn, nn.BatchNorm2d)
    folded, n = fold_batchnorm(net)
    assert n == 1 and isinstance(folded.a.bn, nn.Identity) and isinstance(net.a.bn, nn.BatchNorm2d)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
        # Folding the pair whose convolution output is reused changes the result.
        wrong = fold_batchnorm(net)[0]
        wrong.b.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(wrong.b.conv, wrong.b.bn)
        wrong.b.bn = nn.Identity()
        assert (wrong(x) - net(x)).abs().max() > 1e-2


class _Branching(nn.Module):
    """A forward pass that torch.fx cannot trace (it branches on a tensor's value)."""

    def __init__(self):
        super().__init__()
        self.a = _Block(3, 8)
        self.b = _Block(8, 8)
        self.c = _Block(8, 16)

    def forward(self, x):
        if x.mean() > 10:
            x = x / 2
        return self.c(self.b(self.a(x)))


def test_untraceable_backbone_runs_unfolded(data):
    X, X_test = data
    assert foldable_pairs(_Branching().eval()) == []
    det = _fit(X[:20], backbone=_Branching(), layers=["a", "b", "c"], n_features=12)
    assert det._state.embedder.folded == 0 and det._state.embedder.channels_last
    assert np.isfinite(det.anomaly_map(X_test)).all()


@pytest.mark.cpu_only("bfloat16 on a CPU: its emulation warning and CPU autocast")
def test_bfloat16_runs_the_backbone_in_reduced_precision(data, monkeypatch):
    X, X_test = data
    monkeypatch.setattr(dtypes, "_cpu_native", lambda dtype: False)
    with pytest.warns(UserWarning, match="no native bfloat16 instructions"):
        det = _fit(X, backbone_dtype="bfloat16")
    monkeypatch.setattr(dtypes, "_cpu_native", lambda dtype: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a CPU that has them: no warning
        again = _fit(X, backbone_dtype="bfloat16")
    ref = _fit(X)
    maps, ref_maps = det.anomaly_map(X_test), ref.anomaly_map(X_test)
    np.testing.assert_array_equal(maps, again.anomaly_map(X_test))
    assert 1e-4 < _rel(maps, ref_maps) < 0.05  # autocast is on, and close to float32
    assert det._state.sample.items[0][0].dtype == torch.float32  # features back in float32
    # The model's own bfloat16 forward pass, layer by layer, gives the same embedding.
    emb = det._state.embedder
    x = torch.from_numpy(X_test[:2]).float().div(255).movedim(-1, 1)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = (x - emb._norm[0]) / emb._norm[1]
        direct = emb._runner[0](x.contiguous(memory_format=torch.channels_last))
    with torch.inference_mode():
        via = emb.forward(torch.from_numpy(X_test[:2]).float().div(255).movedim(-1, 1))
    for a, b in zip(via, direct):
        torch.testing.assert_close(a, b.float(), rtol=0.02, atol=0.02)


def test_backbone_dtype_survives_pickle_save_load_and_resume(data, tmp_path, monkeypatch):
    X, X_test = data
    monkeypatch.setattr(dtypes, "_cpu_native", lambda dtype: True)
    det = _fit(X[:40], backbone_dtype="bfloat16")
    maps = det.anomaly_map(X_test)
    det.save(tmp_path / "m.skpadim")
    for copy in (pickle.loads(pickle.dumps(det)), PadimDetector.load(tmp_path / "m.skpadim")):
        assert copy.backbone_dtype == "bfloat16"
        np.testing.assert_array_equal(copy.anomaly_map(X_test), maps)
    resumed = PadimDetector.load(tmp_path / "m.skpadim").partial_fit(X[40:])
    whole = _fit(X, backbone_dtype="bfloat16")
    assert _rel(resumed.anomaly_map(X_test), whole.anomaly_map(X_test)) < 1e-4
    with pytest.raises(ValueError, match="'backbone_dtype' parameter changed from 'bfloat16' to 'float32'"):
        resumed.set_params(backbone_dtype="float32").partial_fit(X[:5])


@pytest.mark.cpu_only("float16 is refused on a CPU, and runs on a GPU")
def test_bad_backbone_dtype_is_refused(data):
    X = data[0][:8]
    with pytest.raises(InvalidParameterError, match="'backbone_dtype' parameter"):
        PadimDetector(**SMALL, backbone_dtype="int8").fit(X)
    with pytest.raises(ValueError, match="'backbone_dtype' parameter of PadimDetector is 'float16'.*GPU"):
        PadimDetector(**SMALL, backbone_dtype="float16").fit(X)


@pytest.mark.onnx
def test_export_refuses_reduced_precision(data, tmp_path, monkeypatch):
    pytest.importorskip("onnx", reason="the export extra (in the test extra) is not installed")
    from skpadim.export import to_onnx

    monkeypatch.setattr(dtypes, "_cpu_native", lambda dtype: True)
    det = _fit(data[0][:12], backbone_dtype="bfloat16")
    with pytest.raises(ValueError, match="backbone_dtype='bfloat16'.*float32"):
        to_onnx(det, tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def test_fit_command_passes_backbone_dtype():
    from skpadim.cli._main import build_parser
    from skpadim.cli._model import detector_params

    parser = build_parser()
    args = parser.parse_args(["fit", "good", "--out", "m.skpadim", "--weights", "none",
                              "--backbone-dtype", "bfloat16"])
    assert detector_params(args)["backbone_dtype"] == "bfloat16"
    assert detector_params(parser.parse_args(["fit", "good", "--out", "m.skpadim"]))["backbone_dtype"] == "float32"
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "good", "--out", "m.skpadim", "--backbone-dtype", "int8"])


class _SamePadConv(nn.Conv2d):
    """A convolution subclass that pads its input itself (as EfficientNet ports do)."""

    def forward(self, x):
        return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))


class _StandardizedConv(nn.Conv2d):
    """A convolution subclass that standardizes its weights: folding a scale into them
    would be undone."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_convolution_subclasses_fold_only_when_the_result_is_unchanged():
    net = nn.Sequential(_SamePadConv(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        _StandardizedConv(8, 8, 3, padding=1), nn.BatchNorm2d(8)).eval()
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    assert foldable_pairs(net) == [("0", "1"), ("3", "4")]  # both are candidates ...
    folded, n = fold_batchnorm(net)
    assert n == 1 and isinstance(folded[1], nn.Identity) and isinstance(folded[4], nn.BatchNorm2d)
    assert isinstance(folded[0], _SamePadConv)  # ... the subclass's own forward pass is kept
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_graph_module_folds_too():
    """torchvision's feature extractors are fx GraphModules, whose copies come back in
    training mode: the folded copy is in evaluation mode and gives the same features."""
    from torchvision.models.feature_extraction import create_feature_extractor

    net = create_feature_extractor(_trained_looking_resnet18(), ["layer1", "layer2"]).eval()
    folded, n = fold_batchnorm(net, keep=("layer1", "layer2"))
    assert n > 0 and not folded.training
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for k, v in net(x).items():
            torch.testing.assert_close(folded(x)[k], v, rtol=1e-4, atol=1e-4)
