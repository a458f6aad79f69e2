"""The torch-free runtime: numpy resize against torch, no torch imported, the command line."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL, textured

pytest.importorskip("onnx", reason="the export extra (in the test extra) is not installed")
pytest.importorskip("onnxruntime")

from skpadim.runtime import resize  # noqa: E402
from skpadim.runtime._resize import _axis_weights  # noqa: E402

pytestmark = pytest.mark.onnx
ROOT = Path(__file__).resolve().parents[1]

SIZES = [  # (H, W) -> (h, w): down, up, non-square, mixed, one pixel, equal on one axis
    ((64, 64), (32, 32)), ((512, 384), (224, 224)), ((37, 100), (224, 300)), ((300, 299), (224, 224)),
    ((17, 400), (31, 13)), ((1, 1), (5, 7)), ((7, 5), (1, 1)), ((224, 224), (224, 100)),
    ((225, 223), (224, 224)), ((1000, 750), (256, 200)),
]


@pytest.mark.parametrize("src, dst", SIZES)
def test_resize_matches_torch(src, dst):
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(sum(src + dst)).random((2, 3, *src), dtype=np.float32)
    ours = resize(x, dst)
    ref = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False, antialias=True).numpy()
    assert ours.shape == ref.shape and ours.dtype == np.float32
    # One float32 rounding at most (the order of torch's compiled additions).
    np.testing.assert_allclose(ours, ref, rtol=0, atol=4e-7)


@pytest.mark.parametrize("n_in, n_out", [(512, 224), (37, 300), (299, 224), (10, 3), (3, 10), (224, 224)])
def test_resize_weights_are_torchs_bit_for_bit(n_in, n_out):
    import torch
    import torch.nn.functional as F

    # Resizing the identity along one axis reads torch's weights off exactly.
    eye = torch.eye(n_in)[None, None]
    ref = F.interpolate(eye, size=(n_in, n_out), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
    first, weights = _axis_weights(n_in, n_out)
    ours = np.zeros((n_in, n_out), np.float32)
    for i in range(n_out):
        for j, w in enumerate(weights[i]):
            if first[i] + j < n_in:
                ours[first[i] + j, i] += w
    np.testing.assert_array_equal(ours, ref)


def test_resize_against_a_slow_float64_reference():
    # The antialiased triangle filter written out directly (PIL's definition).
    def reference(x, n_out):
        n_in = x.shape[-1]
        scale = n_in / n_out
        support = max(scale, 1.0)
        out = np.zeros(x.shape[:-1] + (n_out,))
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
            w = np.array([max(0.0, 1 - abs((j - center + 0.5) / support)) for j in range(lo, hi)])
            out[..., i] = (x[..., lo:hi] * (w / w.sum())).sum(-1)
        return out

    # torch computes the scale and the window centers in float32 (relative
    # error 6e-8, times a center up to ~100 px), hence the 2e-5 tolerance.
    x = np.random.default_rng(0).random((3, 5, 97), dtype=np.float32)
    for n_out in (31, 97, 150):
        np.testing.assert_allclose(resize(x, (5, n_out)), reference(x.astype(np.float64), n_out), atol=2e-5)
    with pytest.raises(ValueError, match="float32"):
        resize(x.astype(np.float64), (5, 31))


@pytest.fixture(scope="module")
def exported(fitted, images, tmp_path_factory):
    from skpadim import PadimDetector
    from skpadim.export import to_onnx

    # conftest's session detector (32 px, resized from 40 px below), fitted where the
    # exported graph runs: the CPU
    det = fitted if fitted.device_.type == "cpu" else PadimDetector(**{**SMALL, "device": "cpu"}).fit(images)
    root = tmp_path_factory.mktemp("rt")
    to_onnx(det, root / "model.onnx", external_data_threshold=0)
    det.save(root / "model.skpadim")
    return det, root


_NO_TORCH = """
import builtins, sys
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in ("torch", "torchvision"):
        raise ImportError(f"import of {name} blocked: the runtime must not need it")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
"""


def test_runtime_runs_where_import_torch_fails(exported, tmp_path):
    from PIL import Image

    det, root = exported
    X = textured(6, size=40, seed=6)
    X[:2, 5:15, 5:15] = 255
    np.save(tmp_path / "x.npy", X)
    Image.fromarray(X[3][:30, :36]).save(tmp_path / "a.png")
    script = _NO_TORCH + textwrap.dedent(f"""
        import numpy as np
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        from skpadim.runtime import load
        det = load({str(root / "model.onnx")!r}, batch_size=4)
        X = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "scores.npy")!r}, det.score_samples(X))
        np.save({str(tmp_path / "labels.npy")!r}, det.predict(X))
        maps = det.anomaly_map([{str(tmp_path / "a.png")!r}, X[0]])
        np.save({str(tmp_path / "map0.npy")!r}, maps[0])
        np.save({str(tmp_path / "masks.npy")!r}, det.anomaly_mask(X))
        assert [len(r) > 0 for r in det.defect_regions(X)] == (det.predict(X) == -1).tolist()
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "sklearn")]
        print("ok", sorted(m for m in sys.modules if m.startswith("skpadim")))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok") and "skpadim._detector" not in proc.stdout
    scores = np.load(tmp_path / "scores.npy")
    ref = det.score_samples(X)
    assert np.abs(scores - ref).max() < 1e-5 * np.abs(ref).max()
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), det.predict(X))
    masks = np.load(tmp_path / "masks.npy")
    assert masks[:2].any() and (masks != det.anomaly_mask(X)).mean() < 1e-3
    amap = np.load(tmp_path / "map0.npy")
    assert amap.shape == (30, 36)
    ref_map = det.anomaly_map([str(tmp_path / "a.png")])[0]
    assert np.abs(amap - ref_map).max() < 1e-5 * np.abs(ref_map).max()


def test_cli_export(exported, tmp_path, capsys):
    from skpadim.cli import main
    from skpadim.runtime import OnnxDetector

    det, root = exported
    out = tmp_path / "cli.onnx"
    assert main(["export", str(root / "model.skpadim"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"to {out}" in printed and "Threshold:" in printed
    X = textured(5, size=40, seed=7)
    runtime = OnnxDetector(out)
    assert np.abs(runtime.score_samples(X) - det.score_samples(X)).max() < 1e-4
    assert runtime.offset_ == pytest.approx(det.offset_, rel=1e-6)
    assert main(["export", str(root / "model.skpadim"), "--out", str(tmp_path / "none" / "m.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(root / "model.onnx"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "is already an export" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0
    assert "Example:\n  skpadim export " in capsys.readouterr().out


@pytest.mark.openvino
def test_cli_export_openvino(exported, tmp_path, capsys):
    pytest.importorskip("openvino")
    from skpadim.cli import main
    from skpadim.runtime import load

    det, root = exported
    out = tmp_path / "ir"
    out.mkdir()
    for name in ("model.xml", "model.bin", "skpadim.json"):  # an earlier export: replaced
        (out / name).write_text("old")
    assert main(["export", str(root / "model.skpadim"), "--out", str(out) + os.sep]) == 0
    assert "OpenVINO folder" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir"]  # no temporary left
    X = textured(4, size=40, seed=8)
    assert np.abs(load(out).score_samples(X) - det.score_samples(X)).max() < 1e-4
    assert main(["info", str(out), "--json"]) == 0  # the command line reads the folder too
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "openvino" and info["threshold"] == pytest.approx(-det.offset_, rel=1e-6)
