"""The backbone's fast paths: channels_last (and its fallback), backbone_dtype (bfloat16/float16)."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

import skpadim._engine.dtypes as dtypes
import skpadim._engine.state as state_module
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
    assert fast.backbone_.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(state_module, "CHANNELS_LAST", set())
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
    assert not det._state.embedder.channels_last
    assert det.backbone_.stem.weight.is_contiguous()
    monkeypatch.setattr(state_module, "CHANNELS_LAST", set())
    ref = _fit(X, **kw)
    np.testing.assert_array_equal(det.anomaly_map(X_test), ref.anomaly_map(X_test))


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
        direct = emb.taps(x)
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
