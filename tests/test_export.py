"""ONNX / OpenVINO export: round trips against PadimDetector, metadata, side file, bad files."""

import json
import os

import numpy as np
import pytest

from conftest import SMALL, textured

onnx = pytest.importorskip("onnx", reason="the export extra (in the test extra) is not installed")
pytest.importorskip("onnxruntime")

from skpadim import PadimDetector  # noqa: E402
from skpadim.export import to_onnx, to_openvino  # noqa: E402
from skpadim.runtime import FormatError, OnnxDetector, load  # noqa: E402

pytestmark = pytest.mark.onnx


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.fixture(scope="module")
def data():
    X = textured(80, size=48, seed=1)
    X_test = textured(12, size=48, seed=2)
    X_test[:4, 10:20, 12:24] = 255  # bright defects
    return X, X_test


@pytest.fixture(scope="module")
def det(data):
    # 48 px images against image_size=32: the resize is exercised; 80 images
    # pass the 64-image reservoir; n_features spans the three layers.
    params = {**SMALL, "n_features": 30, "device": "cpu"}  # where the exported graph runs
    return PadimDetector(**params).fit(data[0])


@pytest.fixture(scope="module")
def exported(det, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    to_onnx(det, path)
    return path


def test_round_trip_scores_labels_and_maps_equal(det, exported, data):
    X_test = data[1]
    runtime = OnnxDetector(exported, batch_size=5)  # batches of 5, 5, 2
    eager_scores = det.score_samples(X_test)
    scores = runtime.score_samples(X_test)
    assert scores.dtype == np.float64 and scores.shape == (12,)
    assert _rel(scores, eager_scores) < 1e-5
    assert runtime.offset_ == det.offset_
    np.testing.assert_array_equal(runtime.predict(X_test), det.predict(X_test))
    assert set(det.predict(X_test)) == {-1, 1}  # both labels are exercised
    np.testing.assert_allclose(runtime.decision_function(X_test), det.decision_function(X_test),
                               atol=1e-5 * np.abs(eager_scores).max())
    maps, s2 = runtime.anomaly_map(X_test, return_scores=True)
    eager_maps = det.anomaly_map(X_test)
    assert maps.shape == eager_maps.shape == (12, 48, 48) and maps.dtype == np.float32
    assert _rel(maps, eager_maps) < 1e-5
    np.testing.assert_array_equal(s2, scores)


def test_masks_and_regions_equal_the_estimators(det, exported, data):
    from conftest import assert_close_regions

    X_test = data[1]
    runtime = OnnxDetector(exported, batch_size=5)
    assert runtime.pixel_threshold_ == det.pixel_threshold_ and runtime.min_region_area == 0
    assert runtime.pixel_anchor_ == det.pixel_anchor_
    masks, eager = runtime.anomaly_mask(X_test), det.anomaly_mask(X_test)
    assert masks.shape == eager.shape == (12, 48, 48) and masks.dtype == bool
    assert (masks != eager).mean() < 1e-3  # a pixel at the level may fall either side
    np.testing.assert_array_equal(masks.any(axis=(1, 2)), det.predict(X_test) == -1)
    assert_close_regions(runtime.defect_regions(X_test), det.defect_regions(X_test))
    # pixel_threshold_ and min_region_area move as the estimator's do
    before = det.pixel_threshold_
    try:
        det.pixel_threshold_ = runtime.pixel_threshold_ = 0.8 * det.pixel_threshold_
        det.set_params(min_region_area=30)
        runtime = OnnxDetector(exported, min_region_area=30)
        runtime.pixel_threshold_ = det.pixel_threshold_
        assert_close_regions(runtime.defect_regions(X_test), det.defect_regions(X_test))
    finally:
        det.pixel_threshold_ = before
        det.set_params(min_region_area=0)
    with pytest.raises(ValueError, match="pixel_threshold_ must be a finite float"):
        runtime.pixel_threshold_ = float("inf")
    with pytest.raises(ValueError, match="'min_region_area' parameter of OnnxDetector must be an int"):
        OnnxDetector(exported, min_region_area=-2)
    runtime.min_region_area = 2.5
    with pytest.raises(ValueError, match="'min_region_area' parameter of OnnxDetector must be an int"):
        runtime.defect_regions(X_test)
    # A file exported before pixel thresholds: the image threshold, no region dropped.
    old = {k: v for k, v in runtime.config_.items() if k not in ("pixel_threshold", "pixel_anchor", "min_region_area")}
    type(runtime).__mro__[1].__init__(runtime, runtime.path, old, runtime._engine, 32, None)
    assert runtime.pixel_threshold_ == runtime.pixel_anchor_ == -runtime.offset_ and runtime.min_region_area == 0


def test_maps_at_each_inputs_own_size_lists_paths_and_floats(det, exported, data, tmp_path):
    from PIL import Image

    X_test = data[1]
    items = [X_test[0], X_test[1][:40, :30], X_test[2][:17, :47], np.ascontiguousarray(X_test[3][::2])]
    paths = []
    for i, im in enumerate(items):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(im).save(p)
        paths.append(str(p))
    runtime = OnnxDetector(exported, batch_size=3)
    for X in (items, paths, [im.astype(np.float64) / 255 for im in items]):
        maps, scores = runtime.anomaly_map(X, return_scores=True)
        eager_maps, eager_scores = det.anomaly_map(X, return_scores=True)
        assert [m.shape for m in maps] == [im.shape[:2] for im in items]
        for m, e in zip(maps, eager_maps):
            assert _rel(m, e) < 1e-5
        assert _rel(scores, eager_scores) < 1e-5


def test_dynamic_batch_size_and_grayscale_refused(det, exported, data):
    X_test = data[1]
    ref = OnnxDetector(exported, batch_size=12).score_samples(X_test)
    for batch_size in (1, 7):
        np.testing.assert_allclose(OnnxDetector(exported, batch_size=batch_size).score_samples(X_test), ref,
                                   rtol=1e-6)
    with pytest.raises(ValueError, match="grayscale .* fitted on color"):
        OnnxDetector(exported).predict(X_test[..., 0])
    with pytest.raises(ValueError, match="X has float pixel values"):
        OnnxDetector(exported).predict(X_test.astype(np.float32))


def test_metadata_travels_in_the_file(det, exported):
    import skpadim

    model = onnx.load(exported)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["skpadim.format"] == "skpadim-onnx" and meta["skpadim.format_version"] == "1"
    config = json.loads(meta["skpadim.config"])
    assert config["offset"] == det.offset_
    assert config["pixel_threshold"] == det.pixel_threshold_ and config["min_region_area"] == 0
    assert config["pixel_anchor"] == det.pixel_anchor_ == -det.offset_for("auto")
    assert config["image_size"] == [32, 32]
    assert config["normalize"] == [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]
    assert config["n_channels_in"] == 3 and config["n_features"] == 30
    assert config["skpadim_version"] == skpadim.__version__
    assert config["external_data"] is None
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["anomaly_maps", "image_scores"]
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "MatMul", "Resize", "Pad", "ReduceMax"} <= ops
    assert "Gemm" not in ops  # the classifier after the last tapped layer is not exported
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"


def test_external_data_forced_on_a_small_model(det, data, tmp_path):
    path = tmp_path / "big.onnx"
    to_onnx(det, path, external_data_threshold=0)
    side = tmp_path / "big.onnx.data"
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    precision_bytes = det.precision_.nbytes
    assert side.stat().st_size > precision_bytes > 10 * path.stat().st_size
    config = OnnxDetector(path).config_
    assert config["external_data"]["location"] == "big.onnx.data"
    assert config["external_data"]["size"] == side.stat().st_size
    assert _rel(OnnxDetector(path).score_samples(data[1]), det.score_samples(data[1])) < 1e-5
    # Both files moved together still load.
    moved = tmp_path / "moved"
    moved.mkdir()
    os.replace(path, moved / "big.onnx")
    os.replace(side, moved / "big.onnx.data")
    assert OnnxDetector(moved / "big.onnx").score_samples(data[1][:2]).shape == (2,)
    # Missing, truncated, or another export's side file.
    os.replace(moved / "big.onnx.data", tmp_path / "kept.data")
    with pytest.raises(FormatError, match="'big.onnx.data', which is missing: copy"):
        OnnxDetector(moved / "big.onnx")
    blob = (tmp_path / "kept.data").read_bytes()
    (moved / "big.onnx.data").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FormatError, match="truncated copy"):
        OnnxDetector(moved / "big.onnx")
    (moved / "big.onnx.data").write_bytes(blob[:-4] + b"\1\2\3\4")
    with pytest.raises(FormatError, match="does not match the SHA-256"):
        OnnxDetector(moved / "big.onnx")


def test_precision_is_exact_in_the_graph(det, exported):
    from onnx import numpy_helper

    model = onnx.load(exported)
    init = {t.name: t for t in model.graph.initializer}
    stored = numpy_helper.to_array(init["precision_t"])
    np.testing.assert_array_equal(stored, det.precision_.transpose(0, 2, 1))
    assert stored.dtype == np.float32


def _write_meta(src, dst, **changes):
    model = onnx.load(src)
    for p in model.metadata_props:
        if p.key in changes:
            p.value = changes[p.key]
    onnx.save(model, dst)


def test_bad_files_are_refused_clearly(exported, tmp_path):
    blob = exported.read_bytes()
    cases = {
        "noise.onnx": (b"\xff\xfe" + os.urandom(3000), "not an ONNX model, or it is truncated or damaged"),
        "zip.onnx": (b"PK\x03\x04" + b"\0" * 100, "not an ONNX model|not a skpadim export"),
        "truncated.onnx": (blob[: len(blob) // 2], "truncated"),
        "empty.onnx": (b"", "not a skpadim export"),
    }
    flipped = bytearray(blob)
    flipped[len(blob) // 3] ^= 0x55
    cases["flipped.onnx"] = (bytes(flipped), "damaged|truncated")
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FormatError, match=message):
            OnnxDetector(tmp_path / name)
    # A valid ONNX model that is not a skpadim export.
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(FormatError, match="not a skpadim export"):
        OnnxDetector(tmp_path / "other.onnx")
    # A newer format version (the graph is intact, so only the version speaks).
    _write_meta(exported, tmp_path / "newer.onnx", **{"skpadim.format_version": "99"})
    with pytest.raises(FormatError, match="format version 99.*Upgrade skpadim"):
        OnnxDetector(tmp_path / "newer.onnx")
    with pytest.raises(FileNotFoundError):
        OnnxDetector(tmp_path / "absent.onnx")
    with pytest.raises(FormatError, match="is a folder"):
        OnnxDetector(tmp_path)


def test_parameters_are_validated(det, exported, tmp_path):
    with pytest.raises(ValueError, match="'opset' parameter of to_onnx must be an int"):
        to_onnx(det, tmp_path / "a.onnx", opset=7)
    with pytest.raises(ValueError, match="'external_data_threshold'"):
        to_onnx(det, tmp_path / "a.onnx", external_data_threshold=-1)
    with pytest.raises(ValueError, match="does not exist"):
        to_onnx(det, tmp_path / "missing" / "a.onnx")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        to_onnx(PadimDetector(), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="'backend' parameter of OnnxDetector"):
        OnnxDetector(exported, backend="tensorrt")
    with pytest.raises(ValueError, match="needs backend='openvino'"):
        OnnxDetector(exported, inference_precision="bf16")
    with pytest.raises(ValueError, match="'batch_size' parameter"):
        OnnxDetector(exported, batch_size=0)
    assert not list(tmp_path.iterdir())


def test_failed_export_leaves_the_old_file_and_no_temporary(det, exported, tmp_path, monkeypatch):
    from skpadim.export import _onnx

    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    (tmp_path / "model.onnx.data").write_bytes(b"old side")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_onnx, "_serialize", boom)
    with pytest.raises(KeyboardInterrupt):
        to_onnx(det, path, external_data_threshold=0)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.data"]
    assert path.read_bytes() == b"old" and (tmp_path / "model.onnx.data").read_bytes() == b"old side"


def test_custom_backbone_without_normalization(data, tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )
    X, X_test = data
    det = PadimDetector(net, layers=["1", "3"], weights=None, image_size=(40, 24), normalize=None,
                        sigma=0, random_state=0, device="cpu").fit(X[:30])
    to_onnx(det, tmp_path / "m.onnx")
    runtime = OnnxDetector(tmp_path / "m.onnx")
    assert runtime.image_size == (40, 24) and runtime.config_["normalize"] is None
    assert _rel(runtime.score_samples(X_test), det.score_samples(X_test)) < 1e-5
    maps = runtime.anomaly_map(X_test[:2])
    assert maps.shape == (2, 48, 48) and _rel(maps, det.anomaly_map(X_test[:2])) < 1e-5


def test_grayscale_detector(tmp_path):
    X = textured(30, size=40, seed=3, channels=1)
    det = PadimDetector(**{**SMALL, "device": "cpu"}).fit(X)  # where the exported graph runs
    to_onnx(det, tmp_path / "g.onnx")
    runtime = OnnxDetector(tmp_path / "g.onnx")
    assert runtime.n_channels_in_ == 1
    assert _rel(runtime.score_samples(X[:6]), det.score_samples(X[:6])) < 1e-5
    with pytest.raises(ValueError, match="color .* fitted on grayscale"):
        runtime.predict(np.repeat(X[:2, ..., None], 3, axis=-1))


@pytest.mark.openvino
def test_openvino_ir_and_onnx_through_openvino(det, exported, data, tmp_path):
    pytest.importorskip("openvino")
    X_test = data[1]
    eager = det.score_samples(X_test)
    via_onnx = OnnxDetector(exported, backend="openvino", batch_size=5)
    assert _rel(via_onnx.score_samples(X_test), eager) < 1e-5
    out = to_openvino(det, tmp_path / "ir")
    assert sorted(os.listdir(out)) == ["model.bin", "model.xml", "skpadim.json"]
    ir = load(out, batch_size=5)
    assert type(ir).__name__ == "OpenVinoDetector" and ir.offset_ == det.offset_
    assert _rel(ir.score_samples(X_test), eager) < 1e-5
    np.testing.assert_array_equal(ir.predict(X_test), det.predict(X_test))
    assert [m.shape for m in ir.anomaly_map([X_test[0][:30, :20]])] == [(30, 20)]
    # Over a folder of other files: refused (replacing an earlier export: test_runtime.py).
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an earlier OpenVINO export"):
        to_openvino(det, tmp_path / "other")
    # A damaged .bin is refused before OpenVINO reads it.
    binfile = tmp_path / "ir" / "model.bin"
    binfile.write_bytes(binfile.read_bytes()[:-8])
    with pytest.raises(FormatError, match="does not match the size and SHA-256"):
        load(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir", "other"]


def test_quantize_int8_keeps_the_gaussian_model_exact(det, exported, data, tmp_path):
    from onnx import numpy_helper

    from skpadim.export import quantize_int8

    X, X_test = data
    out = quantize_int8(exported, tmp_path / "int8.onnx", X[:40])
    runtime = OnnxDetector(out)
    q = runtime.config_["quantized"]
    assert q["n_calibration_images"] == 40 and q["n_convolutions"] >= 10
    assert runtime.offset_ == det.offset_
    model = onnx.load(out)
    init = {t.name: t for t in model.graph.initializer}
    np.testing.assert_array_equal(numpy_helper.to_array(init["precision_t"]), det.precision_.transpose(0, 2, 1))
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if producers.get(n.input[1]) is not None
                 and producers[n.input[1]].op_type == "DequantizeLinear"]
    smoothing = [n for n in convs if n not in quantized]
    assert len(quantized) == q["n_convolutions"] and len(smoothing) == 2  # the Gaussian blur stays float
    matmul = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmul) == 1 and all(
        producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in matmul[0].input)
    # Normal images score about as before; the defects (saturated pixels,
    # beyond the activation range calibrated on good images) score lower,
    # clipped, but still far below every normal image.
    scores, eager = runtime.score_samples(X_test), det.score_samples(X_test)
    assert 0 < _rel(scores[4:], eager[4:]) < 0.1
    assert scores[:4].max() < 1.5 * scores[4:].min()
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(out, tmp_path / "again.onnx", X[:4])
    to_onnx(det, tmp_path / "side.onnx", external_data_threshold=0)
    with pytest.raises(ValueError, match="side file"):
        quantize_int8(tmp_path / "side.onnx", tmp_path / "q2.onnx", X[:4])
