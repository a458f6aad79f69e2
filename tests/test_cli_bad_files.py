"""Batch runs of ``skpadim`` that meet bad files, and runs that are interrupted.

Among good generated images (64 px, random ResNet-18 weights) lie the files
a camera or a copy leaves behind: a corrupt PNG, a truncated JPEG, an empty
file, a text file named like an image, a file without read permission, a
link that points nowhere and a folder that cannot be listed. ``fit``,
``predict`` and ``evaluate`` run on them through the console script, in
subprocesses started with ordinary file permissions even under root (see
:func:`cli_helpers.launcher`), and must finish with every good image
processed, every bad file named with its reason, and exit status 3.
``--strict`` must stop at the first bad file (status 1). An interrupted
``predict`` (SIGINT, SIGTERM, sent from the test) must leave no file that
looks complete.
"""

import os
import re
import signal
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from cli_helpers import FAST, cli, one_thread, read_csv, run_many, save_png, start  # noqa: F401
from cli_helpers import permission_denied_works

from skpadim import PadimDetector
from skpadim.cli._describe import describe
from skpadim.datasets import make_anomaly_images
from skpadim.metrics import image_auroc

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> what its reason must contain
REASONS = {
    "corrupt.png": "",  # Pillow's words for damaged data vary between versions
    "truncated.jpg": "truncated",
    "empty.png": "empty file (0 bytes)",
    "notes.jpg": "not an image file",
    "dangling.png": "broken symbolic link",
    "locked.png": "Permission denied",
    "locked_dir": "cannot list the folder: Permission denied",
}


def _bad_files(folder, good_png, pairs, locked):
    """Write a bad file ``<stem>_<kind>`` into ``folder`` per pair; return {path: reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good_png.read_bytes()
    jpeg = folder / "tmp.jpg"
    Image.open(good_png).convert("RGB").save(jpeg, quality=90)
    jpeg_data = jpeg.read_bytes()
    jpeg.unlink()
    out = {}
    for stem, kind in pairs:
        if kind.startswith("locked") and not locked:
            continue
        path = folder / f"{stem}_{kind}"
        if kind == "corrupt.png":  # a whole file, its compressed data overwritten mid-way
            broken = bytearray(data)
            broken[len(data) // 2: len(data) // 2 + 64] = bytes(64)
            path.write_bytes(bytes(broken))
        elif kind == "truncated.jpg":  # the end of the file is missing
            path.write_bytes(jpeg_data[: len(jpeg_data) // 2])
        elif kind == "empty.png":
            path.write_bytes(b"")
        elif kind == "notes.jpg":
            path.write_text("shift notes, not an image\n")
        elif kind == "dangling.png":
            path.symlink_to(folder / "moved-away.png")
        elif kind == "locked.png":
            path.write_bytes(data)
            path.chmod(0)
        else:  # a folder that cannot be listed; its image is never seen
            save_png(path / "hidden.png", np.asarray(Image.open(good_png)))
            path.chmod(0)
        out[str(path)] = REASONS[kind]
    return out


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Good images with bad files among them; ``skpadim fit`` on them."""
    root = tmp_path_factory.mktemp("badfiles")
    locked = permission_denied_works(root)
    if not locked:
        warnings.warn("running as root without CAP_SETPCAP: a file root cannot read cannot be "
                      "made here, so the permission-denied cases are left out")
    X, _, _ = make_anomaly_images(12, 0, image_size=64, random_state=0)
    for i, x in enumerate(X):
        save_png(root / "good" / f"{i:03d}.png", x)
    train_bad = _bad_files(root / "good", root / "good" / "000.png", [("004", k) for k in REASONS], locked)
    # New images: bad files between good ones, across batches of 4.
    X, _, _ = make_anomaly_images(6, 4, image_size=64, random_state=1)
    for i, x in enumerate(X):
        save_png(root / "new" / f"{2 * i:03d}.png", x)
    new_bad = _bad_files(root / "new", root / "new" / "000.png",
                         [(f"{2 * i + 1:03d}", k) for i, k in enumerate(REASONS)], locked)
    # A test set: bad images in good/ and in a defect folder, and an unreadable mask.
    X, y, masks = make_anomaly_images(6, 4, image_size=64, defects="scratch", random_state=2)
    for i, (x, label, m) in enumerate(zip(X, y, masks)):
        folder = "scratch" if label else "good"
        save_png(root / "test" / folder / f"{i:03d}.png", x)
        if label:
            save_png(root / "test" / "masks" / "scratch" / f"{i:03d}.png", (m * 255).astype(np.uint8))
    (root / "test" / "masks" / "scratch" / "009.png").write_bytes(b"")  # the mask of 009.png
    test_bad = {}  # (the loaders of skpadim.datasets list regular files only: no links, no folders)
    for folder, pairs in (("good", [("001", "corrupt.png"), ("002", "truncated.jpg"), ("003", "locked.png")]),
                          ("scratch", [("006", "empty.png"), ("007", "notes.jpg"), ("008", "locked.png")])):
        test_bad.update(_bad_files(root / "test" / folder, root / "test" / "good" / "000.png", pairs, locked))
    fit = run_many(root, [["fit", "good", "--out", "model.skpadim", *FAST, "--batch-size", "5"]],
                   plain_user=True)[0]
    return {"root": root, "fit": fit, "locked": locked, "train": train_bad, "new": new_bad,
            "test": test_bad}


@pytest.fixture(scope="module")
def runs(bad):
    """predict and evaluate on the bad files, side by side."""
    root = bad["root"]
    (root / "out").mkdir()
    (root / "out" / "pred.csv").write_text("an earlier, complete result\n")
    commands = {
        "predict": ["predict", "model.skpadim", "new", "--csv", "out/pred.csv", "--batch-size", "4"],
        "evaluate": ["evaluate", "model.skpadim", "--data", "test", "--report", "report.html",
                     "--batch-size", "3", "--n-thumbnails", "2"],
    }
    results = run_many(root, list(commands.values()), plain_user=True)
    return dict(zip(commands, results))


@pytest.fixture
def in_root(bad, monkeypatch):
    """In-process commands (the first bad file is not the locked one) run in the data folder."""
    monkeypatch.chdir(bad["root"])
    return bad["root"]


@pytest.fixture
def all_bad(in_root):
    folder = in_root / "allbad"
    folder.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        (folder / name).write_text("not an image")
    return folder


def _warned(stderr):
    """{path: reason} of the 'cannot use' warnings on stderr."""
    return dict(re.findall(r"skpadim: warning: cannot use '([^']+)': (.*); skipped", stderr))


def _check_reasons(found, expected, root):
    assert sorted(found) == sorted(os.path.relpath(p, root) for p in expected)
    for path, reason in expected.items():
        got = found[os.path.relpath(path, root)]
        assert got and expected[path] in got, (path, got)


def _good(folder):
    return sorted(str(p) for p in folder.iterdir() if re.fullmatch(r"\d{3}\.png", p.name))


def test_fit_skips_unreadable_files_and_says_which(bad):
    root, fit = bad["root"], bad["fit"]
    assert fit.returncode == 3, fit.stderr
    n_bad = len(bad["train"])
    assert "Fitted 12 good images from good" in fit.stdout
    assert f"Skipped {n_bad} of {12 + n_bad} images:" in fit.stdout
    listed = dict(re.findall(r"^  (\S+): (.*)$", fit.stdout, re.M))
    _check_reasons(listed, bad["train"], root)
    _check_reasons(_warned(fit.stderr), bad["train"], root)
    assert "check: 100%" in fit.stderr and "12/12 images" in fit.stderr  # checked, then fitted
    # The model is the one fitted on the 12 good images, and records the skipped ones.
    model = PadimDetector.load(root / "model.skpadim")
    assert model.n_samples_seen_ == 12
    info = describe(model, root / "model.skpadim")  # what skpadim info shows
    assert info["training_images"] == 12 and info["skipped_images"] == n_bad
    reference = PadimDetector(weights=None, image_size=64, batch_size=5, random_state=0)
    reference.fit(_good(root / "good"))
    np.testing.assert_allclose(model.mean_, reference.mean_, rtol=1e-5, atol=1e-6)
    assert model.offset_ == pytest.approx(reference.offset_, rel=1e-5)


def test_info_shows_the_images_skipped_at_fit(bad, capsys):
    status, out, err = cli(capsys, "info", bad["root"] / "model.skpadim")
    assert status == 0, err
    assert re.search(rf"^training images\s+12 \({len(bad['train'])} images skipped at fit\)$",
                     out, re.M)


def test_fit_strict_stops_before_fitting(bad, in_root, capsys):
    status, out, err = cli(capsys, "fit", "good", "--out", "strict.skpadim", *FAST, "--strict")
    assert status == 1, err
    first = sorted(os.path.relpath(p, in_root) for p in bad["train"])[0]
    assert first == "good/004_corrupt.png" and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"skpadim: error: cannot use image file '{first}'")
    assert "nothing was fitted" in last and "--strict" in last
    assert "fit:" not in err  # stopped before the first forward pass
    assert not (in_root / "strict.skpadim").exists()
    assert not [p for p in os.listdir(in_root) if p.endswith(".tmp")]


def test_fit_with_no_readable_image_fails(all_bad, in_root, capsys):
    status, _, err = cli(capsys, "fit", "allbad", "--out", "allbad.skpadim", *FAST, "-q")
    assert status == 1
    assert err.strip().splitlines()[-1].startswith(
        "skpadim: error: None of the 2 images under 'allbad' could be read")
    assert not (in_root / "allbad.skpadim").exists()


def test_predict_gives_every_image_a_row_and_goes_on(bad, runs):
    r, root = runs["predict"], bad["root"]
    assert r.returncode == 3, r.stderr
    rows = read_csv((root / "out" / "pred.csv").read_text())
    files = [os.path.relpath(p, root) for p in _good(root / "new") + list(bad["new"])]
    unlisted = sorted(p for p in files if p.endswith("locked_dir"))  # walked after the files
    expected = sorted(set(files) - set(unlisted)) + unlisted
    assert [row["path"] for row in rows] == expected  # one row per image, in order
    failed = {row["path"]: row["error"] for row in rows if row["label"] == "error"}
    _check_reasons(failed, bad["new"], root)
    assert all(rows[i]["score"] == "" for i in range(len(rows)) if rows[i]["label"] == "error")
    _check_reasons(_warned(r.stderr), bad["new"], root)
    # The good images have the scores and labels of the Python API.
    scored = [row for row in rows if row["label"] != "error"]
    assert len(scored) == 10 and {row["error"] for row in scored} == {""}
    model = PadimDetector.load(root / "model.skpadim")
    files = [str(root / row["path"]) for row in scored]
    np.testing.assert_allclose([float(row["score"]) for row in scored], -model.score_samples(files),
                               rtol=1e-5)
    assert [row["label"] == "anomalous" for row in scored] == list(model.predict(files) == -1)
    n_bad = len(bad["new"])
    assert f"{n_bad} of {10 + n_bad} images could not be scored" in r.stderr
    assert "images flagged as anomalous" in r.stderr and f"{10 + n_bad}/{10 + n_bad} images" in r.stderr
    assert sorted(os.listdir(root / "out")) == ["pred.csv"]  # no temporary or partial file


def test_predict_strict_keeps_the_rows_before_the_bad_image(bad, in_root, capsys):
    status, _, err = cli(capsys, "predict", "model.skpadim", "new", "--csv", "strict.csv",
                         "--strict", "-q")
    assert status == 1, err
    first = sorted(os.path.relpath(p, in_root) for p in bad["new"])[0]
    assert first == "new/001_corrupt.png"
    assert err.strip().splitlines()[-1].startswith(
        f"skpadim: error: cannot use image file '{first}'")
    assert not (in_root / "strict.csv").exists()
    partial = (in_root / "strict.csv.partial").read_bytes()
    assert partial.endswith(b"\r\n")  # whole lines only
    rows = read_csv(partial.decode())
    assert [row["path"] for row in rows] == ["new/000.png"]  # the image before the bad one
    assert float(rows[0]["score"]) > 0
    assert "stopped after 1 of" in err and "strict.csv.partial" in err


def test_predict_with_no_readable_image_fails_with_a_full_csv(all_bad, capsys):
    status, out, err = cli(capsys, "predict", "model.skpadim", "allbad", "-q")
    assert status == 1
    rows = read_csv(out)
    assert [(row["path"], row["label"]) for row in rows] == [("allbad/a.png", "error"), ("allbad/b.png", "error")]
    assert err.strip().splitlines()[-1].startswith("skpadim: error: None of the 2 images could be scored")


def test_evaluate_leaves_unreadable_files_out_and_lists_them(bad, runs):
    r, root = runs["evaluate"], bad["root"]
    assert r.returncode == 3, r.stderr
    expected = dict(bad["test"])
    mask = str(root / "test" / "masks" / "scratch" / "009.png")
    expected[mask] = "empty file (0 bytes)"
    assert "Evaluated 10 images (6 good, 4 defective)" in r.stdout
    n = len(expected)
    assert f"Left out {n} files that could not be scored ({10 + n - 1} images in all):" in r.stdout
    listed = dict(re.findall(r"^  (\S+): (.*)$", r.stdout, re.M))
    assert listed.pop(os.path.relpath(mask, root)).startswith("mask: ")
    del expected[mask]
    _check_reasons(listed, expected, root)
    # The image metric is the one of the readable images.
    model = PadimDetector.load(root / "model.skpadim")
    good, defective = _good(root / "test" / "good"), _good(root / "test" / "scratch")
    scores = -model.score_samples(good + defective)
    auroc = image_auroc([0] * len(good) + [1] * len(defective), scores)
    shown = float(re.search(r"^Image AUROC\s+(\S+)", r.stdout, re.M).group(1))
    assert shown == pytest.approx(auroc, abs=5e-4)
    assert "1 defective images have no readable mask" in r.stderr
    page = (root / "report.html").read_text()
    assert f"{n} files left out" in page and ">Files left out</h2>" in page
    for path in list(expected) + [mask]:
        assert f"<td>{os.path.relpath(path, root)}</td>" in page, path


def _wait_for_rows(folder, proc, n, timeout=240):
    """Wait until the CSV being written under ``folder`` holds ``n`` rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "predict ended before it could be interrupted"
        for name in os.listdir(folder):
            if name.startswith(".pred.csv.") and name.endswith(".tmp"):
                with open(folder / name, "rb") as f:
                    if f.read().count(b"\n") > n:
                        return
        time.sleep(0.05)
    pytest.fail(f"predict wrote fewer than {n} rows in {timeout} s")


def test_interrupted_predict_leaves_no_file_that_looks_complete(bad, tmp_path):
    """SIGINT (Ctrl-C) and SIGTERM, each to a long predict, sent once rows are written."""
    root = bad["root"]
    many = tmp_path / "many"
    many.mkdir()
    for i in range(3000):  # one image under many names: a long run
        os.link(root / "new" / "000.png", many / f"{i:04d}.png")
    earlier = b"path,score,label,error\r\nold.png,1.5,normal,\r\n"
    cases = {"SIGINT": (signal.SIGINT, 130, "interrupted"), "SIGTERM": (signal.SIGTERM, 143, "terminated")}
    procs = {}
    for name in cases:
        (tmp_path / name).mkdir()
        (tmp_path / name / "pred.csv").write_bytes(earlier)
        procs[name] = start(tmp_path, ["predict", root / "model.skpadim", "many", "--csv",
                                       tmp_path / name / "pred.csv", "--batch-size", "1"])
    try:
        stderr = {}
        for name, (sig, _, _) in cases.items():
            _wait_for_rows(tmp_path / name, procs[name], 3)
            procs[name].send_signal(sig)
        for name, proc in procs.items():
            stderr[name] = proc.communicate(timeout=120)[1]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, (_, status, word) in cases.items():
        out, err = tmp_path / name, stderr[name]
        assert procs[name].returncode == status, err
        assert err.strip().splitlines()[-1] == f"skpadim: {word}"
        assert (out / "pred.csv").read_bytes() == earlier  # the earlier result, untouched
        partial = (out / "pred.csv.partial").read_bytes()
        assert partial.endswith(b"\r\n") and b"\r\n\r\n" not in partial  # whole lines only
        rows = read_csv(partial.decode())
        assert 3 <= len(rows) < 3000
        assert [row["path"] for row in rows] == [f"many/{i:04d}.png" for i in range(len(rows))]
        assert all(float(row["score"]) > 0 and row["label"] in ("normal", "anomalous") for row in rows)
        assert f"stopped after {len(rows)} of 3000 images" in err
        assert sorted(os.listdir(out)) == ["pred.csv", "pred.csv.partial"]  # no temporary file


def test_evaluate_strict_stops_at_the_first_bad_image(bad, in_root, capsys):
    status, _, err = cli(capsys, "evaluate", "model.skpadim", "--data", "test", "--report",
                         "strict.html", "--strict", "-q")
    assert status == 1, err
    assert err.strip().splitlines()[-1].startswith(
        "skpadim: error: cannot use image file 'test/good/001_corrupt.png'")
    assert not (in_root / "strict.html").exists()


def test_a_broken_link_named_on_the_command_line_gets_an_error_row(bad, in_root, capsys):
    status, out, err = cli(capsys, "predict", "model.skpadim", "new/000.png", "new/009_dangling.png",
                           "-q")
    assert status == 3, err
    rows = read_csv(out)
    assert [row["label"] for row in rows] == ["normal", "error"]
    assert rows[1]["error"].startswith("a broken symbolic link")
    status, _, err = cli(capsys, "predict", "model.skpadim", "new/000.png", "new/typo.png")
    assert status == 1 and "'new/typo.png' does not exist" in err  # a typo stops the command


def test_model_fitted_on_grayscale_arrays_reads_grayscale_files(tmp_path, monkeypatch, capsys):
    from conftest import SMALL, textured

    gray = textured(8, channels=1)
    model = PadimDetector(**SMALL).fit(gray)
    model.save(tmp_path / "gray.skpadim")
    save_png(tmp_path / "a_gray.png", gray[0])
    save_png(tmp_path / "b_color.png", textured(1, channels=3)[0])
    monkeypatch.chdir(tmp_path)
    status, out, err = cli(capsys, "predict", "gray.skpadim", "a_gray.png", "b_color.png", "-q")
    assert status == 3, err
    rows = read_csv(out)
    assert float(rows[0]["score"]) == pytest.approx(-model.score_samples(gray[:1])[0], rel=1e-5)
    assert rows[1]["label"] == "error" and "fitted on grayscale images" in rows[1]["error"]


def test_csv_output_keeps_whole_lines_only(tmp_path):
    from skpadim.cli._output import CSVOutput

    path = tmp_path / "p.csv"
    (tmp_path / "p.csv.partial").write_text("left by an earlier interrupted run")
    done = CSVOutput(str(path), ["path", "score"])
    done.write(["a.png", "1.5"])
    done.commit()
    assert path.read_bytes() == b"path,score\r\na.png,1.5\r\n"
    assert sorted(os.listdir(tmp_path)) == ["p.csv"]  # the stale partial file is gone
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would create it

    cut = CSVOutput(str(path), ["path", "score"])
    cut.write(["b.png", "2.5"])
    cut.write(["c.png", "3.5"])
    cut._file.write(b"d.png,4")  # a line cut short, as by a signal inside write()
    assert cut.abort() == str(path) + ".partial"
    assert (tmp_path / "p.csv.partial").read_bytes() == b"path,score\r\nb.png,2.5\r\nc.png,3.5\r\n"
    assert path.read_bytes() == b"path,score\r\na.png,1.5\r\n"  # the finished file, untouched

    empty = CSVOutput(str(tmp_path / "q.csv"), ["path", "score"])
    assert empty.abort() is None  # no row: nothing at all
    assert sorted(os.listdir(tmp_path)) == ["p.csv", "p.csv.partial"]


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
