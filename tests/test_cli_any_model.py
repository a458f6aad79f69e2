"""The command line on any model: files of ``skpadim fit`` and exports, any image size.

A model fitted at the native size takes the images it can (one size; any
size of at least one tile with shared tiles) and gives every other image a
named error row, like an unreadable file: the run goes on and ends with
exit status 3. ``predict``, ``evaluate`` and ``info`` read exports as they
read files of ``fit``; each Python loader that gets the other kind names
the right one. ``info`` shows every parameter that shapes a model. All
in-process, on 32-48 px images with random weights and 10 channels.
"""

import json
import re

import numpy as np
import pytest
from cli_helpers import cli, one_thread, read_csv, save_png  # noqa: F401
from conftest import textured

from skpadim import PadimDetector
from skpadim.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--weights", "none", "--n-features", "10", "-q"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Images of 48 x 48 pixels (and a few of other sizes), and two native-size models."""
    root = tmp_path_factory.mktemp("anymodel")
    for i, x in enumerate(textured(14, 48, seed=0)):
        save_png(root / "good" / f"{i:03d}.png", x)
    new = textured(4, 48, seed=1)
    new[0, 10:20, 10:20] = 255
    for i, x in enumerate(new):
        save_png(root / "new" / f"{i}.png", x)
    save_png(root / "new" / "2-odd.png", textured(1, 64, seed=2)[0][:40, :56])  # a 40 x 56 image
    save_png(root / "new" / "3-tiny.png", textured(1, 32, seed=3)[0][:12, :20])  # smaller than a tile
    for name, sharing in (("position", "position"), ("shared", "shared")):
        assert _run("fit", root / "good", "--out", root / f"{name}.skpadim", *FAST,
                    "--image-size", "native", "--tile-size", "24", "--tile-sharing", sharing) == 0
    return root


@pytest.fixture(scope="module")
def exported(work):
    """A model of skpadim fit at a fixed size, with labelled test images, and its ONNX export."""
    pytest.importorskip("onnx")
    root = work
    assert _run("fit", root / "good", "--out", root / "fixed.skpadim", *FAST, "--image-size", "32") == 0
    assert _run("export", root / "fixed.skpadim", "--out", root / "fixed.onnx") == 0
    for i, x in enumerate(textured(3, 48, seed=4)):
        save_png(root / "test" / "good" / f"{i}.png", x)
    bad = textured(3, 48, seed=5)
    bad[:, 8:24, 8:24] = 255
    for i, x in enumerate(bad):
        save_png(root / "test" / "spot" / f"{i}.png", x)
    return root


def _run(*args):
    """``skpadim ARGS`` in-process, for the module's fixtures (no capsys there)."""
    return main([str(a) for a in args])


# ------------------------------------------------------------------ image sizes


def test_predict_gives_an_image_of_another_size_a_named_row_and_goes_on(work, capsys):
    root = work
    csv = root / "position.csv"
    status, _, err = cli(capsys, "predict", root / "position.skpadim", root / "new", "--csv", csv)
    assert status == 3, err  # some images were left out, the others scored
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in read_csv(csv.read_text())}
    assert all(rows[f"{i}.png"]["label"] in ("normal", "anomalous") for i in (0, 1, 2, 3))
    odd = rows["2-odd.png"]
    assert odd["label"] == "error" and odd["score"] == ""
    assert odd["error"].startswith("40 x 56 pixels, but the model works at the training images' own size, 48 x 48")
    assert "(fitted with --image-size native, the native size in tiles" in odd["error"]
    assert "resize the image to 48 x 48" in odd["error"] and "image_size=None" not in odd["error"]
    assert f"cannot use '{root / 'new' / '2-odd.png'}': 40 x 56 pixels" in err
    assert "2 of 6 images could not be scored" in err


def test_shared_tiles_score_any_size_of_at_least_one_tile(work, capsys):
    root = work
    status, out, err = cli(capsys, "predict", root / "shared.skpadim", root / "new")
    assert status == 3, err
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in read_csv(out)}
    assert rows["2-odd.png"]["label"] in ("normal", "anomalous")  # 40 x 56: scored
    model = PadimDetector.load(root / "shared.skpadim")
    expected = -model.score_samples([str(root / "new" / "2-odd.png")])[0]
    assert float(rows["2-odd.png"]["score"]) == pytest.approx(expected, rel=1e-5)
    tiny = rows["3-tiny.png"]
    assert tiny["label"] == "error" and tiny["error"].startswith("12 x 20 pixels, smaller than the model's 24 x 24 tiles")


def test_evaluate_leaves_out_an_image_of_another_size_and_names_it(work, capsys):
    root = work
    data = root / "eval"
    for i, x in enumerate(textured(2, 48, seed=6)):
        save_png(data / "good" / f"{i}.png", x)
    save_png(data / "good" / "odd.png", textured(1, 64, seed=7)[0][:40, :56])
    bad = textured(2, 48, seed=8)
    bad[:, 4:20, 4:20] = 0
    for i, x in enumerate(bad):
        save_png(data / "spot" / f"{i}.png", x)
    status, out, err = cli(capsys, "evaluate", root / "position.skpadim", "--data", data, "--no-report")
    assert status == 3, err
    assert "Evaluated 4 images (2 good, 2 defective)" in out
    assert "Left out 1 files that could not be scored (5 images in all):" in out
    assert re.search(r"good/odd\.png: 40 x 56 pixels, but the model works at", out)


def test_fit_at_the_native_size_skips_images_of_another_size_and_says_which(work, tmp_path, capsys):
    good = tmp_path / "good"
    for i, x in enumerate(textured(10, 48, seed=9)):
        save_png(good / f"{i:02d}.png", x)
    save_png(good / "05-odd.png", textured(1, 64, seed=10)[0][:40, :56])
    status, out, err = cli(capsys, "fit", good, "--out", tmp_path / "m.skpadim", *FAST, "--image-size", "native")
    assert status == 3, err  # fitted on the others
    assert out.startswith("Fitted 10 good images")
    assert "Skipped 1 of 11 images:" in out
    reason = re.search(r"05-odd\.png: (.*)$", out, re.M).group(1)
    assert reason.startswith("40 x 56 pixels, but --image-size native fits at the size of the first training image")
    assert "--image-size 48x48" in reason and "image_size=None" not in reason
    assert PadimDetector.load(tmp_path / "m.skpadim").n_samples_seen_ == 10


@pytest.mark.parametrize("args, expected", [
    (["--tile-stride", "8"], "--tile-stride needs --tile-size"),
    (["--tile-size", "16", "--tile-stride", "20"], "--tile-stride 20 is larger than --tile-size 16"),
    (["--image-size", "32", "--tile-size", "40"], "--tile-size 40 is larger than the images (32 x 32 pixels, --image-size 32)"),
    (["--image-size", "native", "--tile-size", "64"], "--tile-size 64 is larger than the images (48 x 48 pixels, the size of the first training image"),
])
def test_tile_options_are_checked_and_named_as_flags(work, tmp_path, capsys, args, expected):
    status, _, err = cli(capsys, "fit", work / "good", "--out", tmp_path / "m.skpadim", *FAST, *args)
    assert status == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("skpadim: error: ") and expected in line, line
    assert "tile_size" not in line and "image_size" not in line
    assert not (tmp_path / "m.skpadim").exists()


def test_the_estimators_refusals_name_the_flags(work, tmp_path, capsys, monkeypatch):
    from skpadim._engine import memory

    status, _, err = cli(capsys, "fit", work / "good", "--out", tmp_path / "m.skpadim", *FAST[:2],
                         "--n-features", "5000", "--image-size", "32", "-q")
    assert status == 1 and "skpadim: error: --n-features is 5000, but layers" in err, err
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)  # 1 KiB free
    status, _, err = cli(capsys, "fit", work / "good", "--out", tmp_path / "m.skpadim", *FAST,
                         "--image-size", "native")
    assert status == 1, err
    assert "--n-features 10 with 144 patch positions needs about" in err
    assert "Set --tile-size (e.g. --tile-size 256 with --tile-sharing shared" in err, err
    assert not re.search(r"\b(tile_size|tile_sharing|n_features|image_size)\b", err), err


# ------------------------------------------------------------------ exports


def test_an_export_takes_and_refuses_the_same_images(work, tmp_path, capsys):
    pytest.importorskip("onnx")
    root = work
    assert cli(capsys, "export", root / "position.skpadim", "--out", tmp_path / "position.onnx")[0] == 0
    rows = {}
    for model in (root / "position.skpadim", tmp_path / "position.onnx"):
        status, out, err = cli(capsys, "predict", model, root / "new")
        assert status == 3, err
        rows[model.suffix] = read_csv(out)
    saved, exported = rows[".skpadim"], rows[".onnx"]
    assert [(r["path"], r["label"], r["error"]) for r in exported] == [
        (r["path"], r["label"], r["error"]) for r in saved]
    np.testing.assert_allclose([float(r["score"] or "nan") for r in exported],
                               [float(r["score"] or "nan") for r in saved], rtol=1e-4)


def test_predict_evaluate_and_info_read_exports_as_they_read_model_files(exported, capsys):
    root = exported
    model = PadimDetector.load(root / "fixed.skpadim")
    status, out, err = cli(capsys, "predict", root / "fixed.onnx", root / "new")
    assert status == 0, err
    rows = read_csv(out)
    scores = -model.score_samples([r["path"] for r in rows])
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, rtol=1e-4)
    status, out, err = cli(capsys, "evaluate", root / "fixed.onnx", "--data", root / "test", "--no-report")
    assert status == 0, err
    assert "Evaluated 6 images (3 good, 3 defective)" in out
    status, out, err = cli(capsys, "info", root / "fixed.onnx", "--json")
    assert status == 0, err
    info = json.loads(out)
    assert info["kind"] == "onnx" and info["image_size"] == [32, 32] and info["n_features"] == 10
    assert info["threshold"] == pytest.approx(-model.offset_, rel=1e-6)
    assert info["training_images"] == 14 and info["thresholds_by_contamination"] is None


def test_each_python_loader_names_the_other_one(exported):
    from skpadim.runtime import FormatError, load

    root = exported
    with pytest.raises(ValueError, match=r"is an ONNX export \(skpadim export\), not a file of "
                                         r"PadimDetector\.save: run it with skpadim\.runtime\.load"):
        PadimDetector.load(root / "fixed.onnx")
    with pytest.raises(FormatError, match=r"is a model file of PadimDetector\.save \(skpadim fit\), not an "
                                          r"export: load it with PadimDetector\.load.*skpadim export"):
        load(root / "fixed.skpadim")


def test_an_export_runs_here_not_on_a_cluster(exported, capsys):
    status, _, err = cli(capsys, "predict", exported / "fixed.onnx", exported / "new",
                         "--scheduler", "tcp://127.0.0.1:1")
    assert status == 1 and "is an export, which runs on this machine: leave --scheduler out" in err


def test_export_of_an_export_says_it_is_one_already(exported, tmp_path, capsys):
    status, _, err = cli(capsys, "export", exported / "fixed.onnx", "--out", tmp_path / "again.onnx")
    assert status == 1
    assert "is already an export (onnx); skpadim predict, evaluate and info run it as it is" in err
    assert not (tmp_path / "again.onnx").exists()


# ------------------------------------------------------------------ info


def test_info_shows_every_parameter_that_shapes_the_model(work, capsys):
    status, out, err = cli(capsys, "info", work / "position.skpadim")
    assert status == 0, err
    assert re.search(r"^tiles\s+24 x 24, stride 24 x 24, position: Gaussians per tile location; "
                     r"4 tiles per image at 48 x 48$", out, re.M)
    assert re.search(r"^image size\s+native \(--image-size native\): 48 x 48 \(height x width\); "
                     r"images of another size are refused$", out, re.M)
    for key in ("normalization", "neighbourhood", "covariance", "sigma", "image score", "shift tolerance"):
        assert re.search(rf"^{key}\s+\S", out, re.M), key
    status, out, err = cli(capsys, "info", work / "shared.skpadim", "--json")
    info = json.loads(out)
    assert info["tiles"] == {"size": [24, 24], "stride": [24, 24], "sharing": "shared"}
    assert info["native_size"] is True and info["n_tiles"] == 4
    model = PadimDetector.load(work / "shared.skpadim")
    assert info["fitted_params"] == model.fitted_params_
    for key in ("normalize", "neighbourhood", "backbone_dtype", "covariance", "epsilon", "sigma",
                "image_score", "shift_tolerance", "contamination"):
        assert info[key] == model.fitted_params_[key], key
