"""Rough edges of the command line: huge images, a dashboard address, narrow overlays, few
images, and what the docs and the messages say (install commands, file format).

In-process, on the session's small detector (conftest) and images of a few
dozen pixels; Pillow's pixel limit is lowered instead of writing images of
hundreds of megapixels.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli, one_thread, read_csv, save_png  # noqa: F401
from conftest import textured

from skpadim import _install

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/cli.md", "docs/deploy.md", "docs/safety.md", "docs/distributed.md")


@pytest.fixture(scope="module")
def model(fitted, tmp_path_factory):
    """The session's small detector as a model file, and a 40 x 40 image."""
    root = tmp_path_factory.mktemp("edges")
    fitted.save(root / "model.skpadim")
    save_png(root / "part.png", textured(1, 40, seed=3)[0])  # 1600 pixels
    return root


# ------------------------------------------------------------------ huge images


def test_an_image_past_the_pixel_limit_names_the_limit_and_how_to_raise_it(model, capsys):
    status, out, err = cli(capsys, "predict", model / "model.skpadim", model / "part.png",
                           "--max-image-pixels", "1000")
    assert status == 1, err  # its only image could not be used
    reason = read_csv(out)[0]["error"]
    assert reason.startswith("1,600 pixels, more than Pillow decodes (1,000): a guard against "
                             "decompression bombs")
    assert "--max-image-pixels 1600 on the command line" in reason and ".." not in reason
    assert "DOS attack" not in err
    status, out, err = cli(capsys, "predict", model / "model.skpadim", model / "part.png",
                           "--max-image-pixels", "1600")
    assert status == 0 and read_csv(out)[0]["label"] in ("normal", "anomalous"), err


def test_python_names_the_limit_in_one_sentence(model, monkeypatch):
    from PIL import Image

    from skpadim._images import read_image
    from skpadim.exceptions import UnreadableImageError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(UnreadableImageError) as caught:
        read_image(model / "part.png")
    message = str(caught.value)
    assert "1,600 pixels, more than Pillow decodes (1,000)" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS" in message and ".." not in message
    assert "Expected a readable image file" not in message  # it is one, only large


def test_an_image_under_the_limit_is_read_without_pillows_warning(model, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: Pillow warns, then decodes
    status, out, err = cli(capsys, "predict", model / "model.skpadim", model / "part.png",
                           "--max-image-pixels", "2000")
    assert status == 0, err
    assert "decompression bomb" not in err and "DecompressionBomb" not in err
    assert Image.MAX_IMAGE_PIXELS == 1000  # the command restores Pillow's setting


# ------------------------------------------------------------------ a dashboard address


def test_a_dashboard_address_is_refused_before_any_client_is_made(model, capsys, monkeypatch):
    pytest.importorskip("distributed")
    import skpadim.distributed._client as client_module

    made = []
    monkeypatch.setattr(client_module, "Client", lambda *a, **k: made.append(a) or 1 / 0)
    status, _, err = cli(capsys, "predict", model / "model.skpadim", model / "part.png",
                         "--scheduler", "http://10.0.0.5:8787")
    assert status == 1 and made == []  # a Client that fails hangs 20 s at exit closing itself
    line = err.strip()
    assert "\n" not in line and "dashboard" in line and "tcp://10.0.0.5:8786" in line


# ------------------------------------------------------------------ pictures


@pytest.mark.parametrize("shape", [(256, 16), (40, 40)])
def test_overlay_titles_fit_narrow_images(shape):
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from skpadim.cli._report import overlay_figure

    title = "anomalous: score 11.7612 (threshold 10.5063)"
    fig = overlay_figure(np.zeros(shape + (3,), np.uint8), np.zeros(shape, np.float32), 10.5, title=title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    text = fig.axes[0].title
    box, page = text.get_window_extent(canvas.get_renderer()), fig.bbox
    assert box.x0 >= page.x0 and box.x1 <= page.x1 and box.y1 <= page.y1
    assert " ".join(text.get_text().split()) == title  # wrapped, not cut


# ------------------------------------------------------------------ few images


def test_fit_warns_when_the_images_are_fewer_than_the_features(tmp_path, capsys):
    for i, x in enumerate(textured(8, 32)):
        save_png(tmp_path / "good" / f"{i}.png", x)
    common = ["fit", tmp_path / "good", "--out", tmp_path / "m.skpadim", "--weights", "none",
              "--image-size", "32", "-q"]
    status, _, err = cli(capsys, *common, "--n-features", "20")
    assert status == 0, err
    warning = [line for line in err.splitlines() if line.startswith("skpadim: warning: fitted on 8 images")]
    assert len(warning) == 1, err
    assert "no more than the 20 features" in warning[0] and "epsilon" in warning[0]
    assert "--n-features" in warning[0] and "docs/safety.md" in warning[0]
    status, _, err = cli(capsys, *common, "--n-features", "7")
    assert status == 0 and "warning" not in err, err


# ------------------------------------------------------------------ docs and messages


def test_the_docs_show_the_file_format_that_model_files_have(fitted, capsys, tmp_path):
    from skpadim._engine.model_file import FORMAT_VERSION
    from skpadim.cli._describe import LINES

    text = (ROOT / "docs" / "cli.md").read_text()
    block = re.search(r"### `skpadim info MODEL \[--json\]`\n\n```\n(.*?)```", text, re.S).group(1)
    assert f"file format {FORMAT_VERSION}" in block
    shown = [line.split("  ")[0] for line in block.splitlines() if line and not line.startswith(" ")]
    assert shown == [name for name, _ in LINES]  # every line info prints, in its order


def _extras():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]")[1].split("\n[")[0]
    return set(re.findall(r"^([a-z]+) = \[", section, re.M))


def test_every_install_advice_is_the_documented_one(fitted, tmp_path, capsys):
    """The inspection machine's install is one string; every extra named anywhere exists."""
    pytest.importorskip("onnx")
    assert _install.RUNTIME == 'pip install "skpadim[runtime]"'
    extras = _extras()
    texts = {name: (ROOT / name).read_text() for name in DOCS}
    texts.update({str(p): p.read_text() for p in (ROOT / "skpadim").rglob("*.py")})
    for name, text in texts.items():
        assert "--no-deps" not in text, name  # pip then reports torch (and the rest) missing
        for extra in re.findall(r"skpadim\[([a-z,]+)\]", text):
            assert set(extra.split(",")) <= extras, (name, extra)
    for name in ("README.md", "docs/deploy.md", "docs/cli.md"):
        assert _install.RUNTIME in texts[name], name
    fitted.save(tmp_path / "m.skpadim")
    status, out, err = cli(capsys, "export", tmp_path / "m.skpadim", "--out", tmp_path / "m.onnx")
    assert status == 0, err
    assert f"Next, on a machine without torch: {_install.RUNTIME}, then skpadim predict" in out
    status, out, _ = cli(capsys, "export", "--help")
    assert _install.RUNTIME in out and "skpadim[runtime]" not in out.replace(_install.RUNTIME, "")
    status, out, _ = cli(capsys, "--help")
    assert _install.RUNTIME in out


def test_commands_that_need_torch_say_so_in_one_line(model, capsys, monkeypatch):
    monkeypatch.setattr(_install, "has_torch", lambda: False)
    for args in (["fit", model, "--out", model / "x.skpadim"],
                 ["export", model / "model.skpadim", "--out", model / "x.onnx"],
                 ["predict", model / "model.skpadim", model / "part.png"],
                 ["info", model / "model.skpadim"]):
        status, _, err = cli(capsys, *args)
        assert status == 1, args
        assert err.count("\n") == 1 and "needs torch, which is not installed here: " + _install.TORCH in err, err
        assert "predict, evaluate and info run exported models" in err
