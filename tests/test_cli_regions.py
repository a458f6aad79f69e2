"""Localization on the command line: masks, regions, overlays, their metrics and thresholds.

``predict`` writes what ``PadimDetector.anomaly_mask`` and ``defect_regions``
give on the same files (mask PNGs, region columns, JSON lines), with the
model's thresholds or those of the command line; ``evaluate`` scores the
masks with the functions of ``skpadim.metrics``; ``info`` shows the pixel
threshold. All in-process, on a handful of 48-64 px images, with one model
fitted once for the module (random weights, 10 channels).
"""

import json
import re

import numpy as np
import pytest
from cli_helpers import cli, one_thread, read_csv, save_png  # noqa: F401
from PIL import Image

from skpadim import PadimDetector
from skpadim.cli import main
from skpadim.datasets import make_anomaly_images, read_masks

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--weights", "none", "--image-size", "48", "--n-features", "10", "-q"]
REGION_COLUMNS = ["n_regions", "largest_area", "largest_box"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Good images, a labelled test folder (one defective image of another size) and a model
    fitted with ``--min-region-area 2``."""
    root = tmp_path_factory.mktemp("regions")
    X, _, _ = make_anomaly_images(12, 0, image_size=48, random_state=0)
    for i, x in enumerate(X):
        save_png(root / "good" / f"{i:03d}.png", x)
    X, y, masks = make_anomaly_images(3, 2, image_size=48, random_state=1)
    big, _, big_mask = make_anomaly_images(0, 1, image_size=64, random_state=2)
    for i, (x, label, mask) in enumerate(zip([*X, *big], [*y, 1], [*masks, *big_mask])):
        save_png(root / "test" / ("spot" if label else "good") / f"{i}.png", x)
        if label:
            save_png(root / "test" / "masks" / "spot" / f"{i}.png", (mask * 255).astype(np.uint8))
    assert main([str(a) for a in ("fit", root / "good", "--out", root / "model.skpadim", *FAST,
                                  "--min-region-area", "2")]) == 0
    return root


def _files(root):
    return sorted(str(p) for p in (root / "test").glob("[gs]*/*.png"))


def _model(root, **attributes):
    model = PadimDetector.load(root / "model.skpadim")
    for name, value in attributes.items():
        setattr(model, name, value)
    return model


def _predict(capsys, root, tmp_path, *extra):
    files = _files(root)
    (tmp_path / "broken.png").write_text("not an image")
    status, out, err = cli(capsys, "predict", root / "model.skpadim", root / "test" / "good",
                           root / "test" / "spot", tmp_path / "broken.png",
                           "--csv", tmp_path / "p.csv", "--regions", tmp_path / "r.jsonl",
                           "--masks", tmp_path / "masks", "--batch-size", "8", "-q", *extra)
    assert status == 3, err  # the broken file
    rows = read_csv((tmp_path / "p.csv").read_text())
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    return files, rows, lines


def _check_as_python(files, rows, lines, model, tmp_path):
    """The CSV, the JSON lines and the mask files of predict are the model's on the same files."""
    regions = model.defect_regions(files)
    masks = model.anomaly_mask(files)
    assert [r["path"] for r in rows] == files + [str(tmp_path / "broken.png")]
    for row, line, found, mask in zip(rows, lines, regions, masks):
        assert int(row["n_regions"]) == len(found)
        assert row["label"] == ("anomalous" if found else "normal")  # regions follow the labels
        assert int(row["largest_area"]) == (found[0].area if found else 0)
        assert row["largest_box"] == (" ".join(map(str, found[0].box)) if found else "")
        assert line["regions"] == [r.to_dict() for r in found]
        assert (line["path"], line["label"], line["error"]) == (row["path"], row["label"], None)
        assert line["score"] == pytest.approx(float(row["score"]), rel=1e-5)
        assert line["mask"] == row["mask"]
        written, = read_masks([row["mask"]])
        np.testing.assert_array_equal(written, mask)  # at the image's own size
    assert [line["index"] for line in lines] == list(range(len(rows)))
    broken, line = rows[-1], lines[-1]
    assert [broken[k] for k in ["score", *REGION_COLUMNS, "mask"]] == [""] * 5 and broken["error"]
    assert (line["score"], line["regions"], line["mask"], line["label"]) == (None, None, None, "error")
    assert line["error"] == broken["error"]


def test_predict_writes_the_masks_and_regions_of_the_python_api(work, tmp_path, capsys):
    files, rows, lines = _predict(capsys, work, tmp_path, "--out", tmp_path / "overlays")
    assert list(rows[0]) == ["path", "score", "label", *REGION_COLUMNS, "overlay", "mask", "error"]
    model = _model(work)
    assert model.min_region_area == 2  # fit --min-region-area, stored in the model
    _check_as_python(files, rows, lines, model, tmp_path)
    assert [r["mask"] for r in rows[:2]] == [str(tmp_path / "masks" / "good" / f"{i}.png") for i in (0, 1)]
    assert {r["label"] for r in rows} == {"normal", "anomalous", "error"}
    assert sorted(p.name for p in (tmp_path / "masks" / "spot").iterdir()) == ["3.png", "4.png", "5.png"]
    assert read_masks([rows[5]["mask"]])[0].shape == (64, 64)
    # The overlays outline the regions in red: pure red pixels where an image has regions only.
    for row in rows[:-1]:
        with Image.open(row["overlay"]) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
        red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
        assert (red.sum() > 20) == (int(row["n_regions"]) > 0), (row, red.sum())


def test_the_thresholds_of_the_command_line_move_the_masks(work, tmp_path, capsys):
    model = _model(work, offset_=0.5 * _model(work).offset_, pixel_threshold_=0.0)  # half the threshold
    model.set_params(min_region_area=0)
    files, rows, lines = _predict(capsys, work, tmp_path, "--threshold", repr(-model.offset_),
                                  "--pixel-threshold", "0", "--min-region-area", "0")
    assert sum(r["label"] == "anomalous" for r in rows) > 3  # a lower threshold flags more
    _check_as_python(files, rows, lines, model, tmp_path)
    # One region per flagged image when the smaller ones are dropped, and a level above every
    # map leaves each flagged image its maximum only.
    _, rows, _ = _predict(capsys, work, tmp_path, "--min-region-area", "100000", "--pixel-threshold", "1e9")
    assert {r["n_regions"] for r in rows} == {"0", "1", ""}
    assert all(int(r["largest_area"]) <= 4 for r in rows if r["n_regions"] == "1")


def _printed(out, name):
    match = re.search(rf"^{re.escape(name)}\s+(\d\.\d+|n/a)", out, re.M)
    assert match, (name, out)
    return None if match[1] == "n/a" else float(match[1])


@pytest.mark.parametrize("extra", [[], ["--pixel-threshold", "2.5", "--min-region-area", "4"]])
def test_evaluate_scores_the_masks_with_the_metrics_functions(work, tmp_path, capsys, extra):
    from skpadim import metrics

    report = ["--report", tmp_path / "r.html", "--n-thumbnails", "1"] if not extra else ["--no-report"]
    status, out, err = cli(capsys, "evaluate", work / "model.skpadim", "--data", work / "test", "-q",
                           *report, *extra)
    assert status == 0, err
    model = _model(work)
    if extra:
        model.pixel_threshold_ = 2.5
        model.set_params(min_region_area=4)
    files = _files(work)
    predicted, maps = model.anomaly_mask(files), model.anomaly_map(files)
    true = read_masks([f.replace("/spot/", "/masks/spot/") if "/spot/" in f else None for f in files],
                      shapes=[m.shape for m in maps])
    expected = {
        "Pixel F1": metrics.pixel_f1_score(true, predicted),
        "Pixel IoU": metrics.pixel_iou(true, predicted),
        "Pixel F1-max": metrics.pixel_f1_max(true, maps),
        "Defects found": metrics.region_recall(true, predicted),
        "False regions": metrics.false_regions_per_image(true, predicted, normal_only=True),
    }
    for name, value in expected.items():
        assert _printed(out, name) == pytest.approx(value, abs=5e-4), name
    source = "--pixel-threshold" if extra else "the model's"
    assert f"Defect masks at pixel threshold {model.pixel_threshold_:.6g} ({source})" in out
    if not extra:
        page = (tmp_path / "r.html").read_text()
        for name in ("Pixel F1", "Pixel IoU", "Pixel F1-max (oracle)", "Defects found",
                     "False regions per good image"):
            assert f"<td>{name}</td>" in page, name
        assert "red outline: the defect regions the model outputs" in page


def test_info_shows_the_pixel_threshold(work, capsys):
    model = _model(work)
    status, out, err = cli(capsys, "info", work / "model.skpadim", "--json")
    assert status == 0, err
    info = json.loads(out)
    assert info["pixel_threshold"] == model.pixel_threshold_ and info["pixel_anchor"] == model.pixel_anchor_
    assert info["min_region_area"] == 2
    status, out, err = cli(capsys, "info", work / "model.skpadim")
    assert re.search(rf"^pixel threshold\s+{model.pixel_threshold_:.6g} \(anomaly-map level", out, re.M)
    assert re.search(rf"^pixel anchor\s+{model.pixel_anchor_:.6g} ", out, re.M)
    assert re.search(r"^min region area\s+2 pixels \(smaller defect regions are dropped", out, re.M)


@pytest.mark.parametrize("args, status, expected", [
    (["--min-region-area", "-1"], 2, "argument --min-region-area: expected a whole number, 0 or more, got '-1'"),
    (["--min-region-area", "2.5"], 2, "argument --min-region-area: expected a whole number"),
    (["--pixel-threshold", "nan"], 2, "argument --pixel-threshold: expected a number, got 'nan'"),
    (["--masks", "{model}"], 1, "--masks '{model}' is a file; pass a folder for the mask files."),
    (["--masks", "{tmp}", "--out", "{tmp}"], 1, "--out and --masks both name '{tmp}'"),
    (["--regions", "{tmp}"], 1, "--regions '{tmp}' is a folder; pass a file name."),
    (["--regions", "{tmp}/a", "--csv", "{tmp}/a"], 1, "--csv and --regions both name '{tmp}/a'"),
])
def test_bad_localization_options_are_refused_naming_the_flag(work, tmp_path, capsys, args, status, expected):
    names = {"model": work / "model.skpadim", "tmp": tmp_path}
    args = [a.format(**names) for a in args]
    got, _, err = cli(capsys, "predict", work / "model.skpadim", work / "test" / "good", *args)
    assert got == status
    line, = err.strip().splitlines()
    assert expected.format(**names) in line
    assert not list(tmp_path.iterdir())  # nothing written
    if status == 2:  # evaluate (and fit, for --min-region-area) check them alike
        got, _, err = cli(capsys, "evaluate", work / "model.skpadim", "--data", work / "test", *args)
        assert got == 2 and expected in err
        if args[0] == "--min-region-area":
            got, _, err = cli(capsys, "fit", work / "good", "--out", tmp_path / "m.skpadim", *args)
            assert got == 2 and expected in err
