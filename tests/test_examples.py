"""Run the example scripts end to end, in subprocesses, and check what they print."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_example(name, *args, cwd, timeout=300):
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"examples/{name} exited with status {proc.returncode}.\n"
        f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def metric(name, output):
    """The value printed on the line ``<name>: <value>``, checked to be in [0, 1]."""
    found = re.findall(rf"^{re.escape(name)}: ([-+0-9.naif]+)", output, flags=re.M)
    assert len(found) == 1, f"expected one line '{name}: <value>' in:\n{output}"
    value = float(found[0])
    assert 0.0 <= value <= 1.0, f"{name} = {value} is not in [0, 1]"
    return value


def test_quickstart(tmp_path):
    out = run_example("quickstart.py", cwd=tmp_path)
    assert metric("Image AUROC", out) > 0.9
    assert metric("Pixel AUROC", out) > 0.9


def test_grid_search(tmp_path):
    out = run_example("grid_search.py", cwd=tmp_path)
    assert "GridSearchCV: 4 candidates x 3 folds" in out
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([0-9.]+) \+- ([0-9.]+)\s+([0-9.]+)", out, flags=re.M)
    assert len(rows) == 4, out
    means = [float(r[2]) for r in rows]
    assert all(0.0 <= m <= 1.0 for m in means)
    assert means == sorted(means, reverse=True)  # printed best first
    best = re.search(r"Best parameters: \{'image_size': (\d+), 'n_features': (\d+)\}", out)
    assert best is not None and best.groups() == rows[0][:2], out
    assert metric("Test image AUROC", out) > 0.8
    counts = re.findall(r"defective:\s+(\d+) flagged \(TP\),\s+(\d+) missed \(FN\)\n"
                        r"\s+good:\s+(\d+) flagged \(FP\),\s+(\d+) passed \(TN\)", out)
    assert len(counts) == 2, out  # before and after calibrate_threshold
    for tp, fn, fp, tn in counts:
        assert int(tp) + int(fn) == 40 and int(fp) + int(tn) == 40


@pytest.mark.realdata
def test_magnetic_tile(magnetic_tile, tmp_path):
    out_dir = tmp_path / "pictures"
    out = run_example(
        "magnetic_tile.py", magnetic_tile, "--out", out_dir,
        "--n-train", 60, "--n-test", 60, "--image-size", 128, cwd=tmp_path,
    )
    assert "Data: 60 good training tiles; test 60 tiles" in out
    image_auroc = metric("Image AUROC", out)
    metric("Pixel AUROC", out)
    metric("AUPRO (FPR <= 0.3)", out)
    if "Backbone: EfficientNet-Lite0" in out:  # real ImageNet features
        assert image_auroc > 0.6
    expected = {
        "most_anomalous_defects.png", "least_anomalous_defects.png",
        "most_anomalous_good.png", "least_anomalous_good.png", "roc.png", "pro.png",
    }
    assert {p.name for p in out_dir.iterdir()} == expected
    for name in expected:
        data = (out_dir / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, name
        assert f"Saved {out_dir / name}" in out


def test_high_resolution(tmp_path):
    out = run_example("high_resolution.py", "--size", 192, "--tile", 64, "--resize", 64, "--n-train", 10,
                      "--n-test", 3, "--out", tmp_path / "overlay.png", cwd=tmp_path)
    assert "Data: 10 good 192 x 192 training images" in out
    assert re.search(r"^resized to 64 px: Image AUROC [0-9.]+", out, flags=re.M), out
    assert metric("Image AUROC", out) >= 0.5  # the tiled detector's; tiny run, random weights
    assert (tmp_path / "overlay.png").read_bytes().startswith(PNG_SIGNATURE)


def test_defect_regions(tmp_path):
    out = run_example("defect_regions.py", "--size", 64, "--n-train", 24, "--n-test", 4,
                      "--out", tmp_path / "regions.png", cwd=tmp_path)
    assert re.search(r"^Fitted 24 good images; image threshold [0-9.e+-]+, pixel threshold", out, flags=re.M), out
    rows = re.findall(r"^  test image +\d+ \((defective|good), predict ([+-]1)\): (.*)$", out, flags=re.M)
    assert len(rows) == 6, out
    for _, label, found in rows:  # regions exactly on the images predict flags
        assert (found == "no region") == (label == "+1"), out
    for name in ("Label-free pixel threshold", "Calibrated, on the other half"):
        line = re.search(rf"^{name}: pixel F1 ([0-9.]+), IoU ([0-9.]+), defects found (\d+)%", out, flags=re.M)
        assert line is not None and 0 <= float(line[2]) <= float(line[1]) <= 1, out
    assert (tmp_path / "regions.png").read_bytes().startswith(PNG_SIGNATURE)
