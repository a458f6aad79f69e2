"""The inspection machine: skpadim installed as docs/deploy.md says, in an environment without torch.

One test runs the command line in a real virtual environment holding only
what ``pip install "skpadim[runtime]"`` installs (tests/runtime_venv.py;
``.ci/run`` builds it before the tests, ``SKPADIM_RUNTIME_VENV`` names it;
without the variable the test builds its own, which needs PyPI, unless
``SKPADIM_SKIP_VENV=1``). A cheaper one checks the import chain of
``skpadim --help`` in this environment, with torch made unimportable.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import read_csv, save_png
from conftest import textured
from runtime_venv import build, clean_environ, executable

from skpadim import _install

ROOT = Path(__file__).resolve().parent.parent
_NO_TORCH = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Blocked())
"""


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory):
    given = os.environ.get("SKPADIM_RUNTIME_VENV")
    if given:
        return Path(given)
    if os.environ.get("SKPADIM_SKIP_VENV") == "1":
        pytest.skip("SKPADIM_SKIP_VENV=1: the torch-free environment is not built.")
    return build(tmp_path_factory.mktemp("runtime-venv") / "venv")


def test_help_imports_no_torch(tmp_path):
    script = _NO_TORCH + "import sys; sys.argv = ['skpadim', '--help']\nfrom skpadim.cli import console\nconsole()"
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: skpadim" in proc.stdout and _install.RUNTIME in proc.stdout


def test_inspection_machine_runs_exports_from_the_documented_install(runtime_venv, fitted, tmp_path):
    pytest.importorskip("onnx")
    from skpadim.export import to_onnx

    to_onnx(fitted, tmp_path / "model.onnx")
    fitted.save(tmp_path / "model.skpadim")
    X = textured(4, 40, seed=11)
    X[0, 5:20, 5:20] = 255
    for i, x in enumerate(X):
        save_png(tmp_path / "test" / ("spot" if i == 0 else "good") / f"{i}.png", x)
    save_png(tmp_path / "test" / "spot" / "9.png", X[0][::-1])
    env = clean_environ()

    def run(*args, program="skpadim"):
        return subprocess.run([executable(runtime_venv, program), *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, env=env, timeout=300)

    checked = run("-m", "pip", "check", program="python")
    assert checked.returncode == 0 and "No broken requirements" in checked.stdout, checked.stdout
    probe = run("-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('skpadim').origin)\n"
                      "from skpadim import PadimDetector", program="python")
    assert probe.stdout.startswith("None ") and str(ROOT) not in probe.stdout, probe.stdout  # the installed copy
    assert probe.returncode == 1 and _install.TORCH in probe.stderr.splitlines()[-1], probe.stderr
    assert run("--help").returncode == 0
    info = run("info", "model.onnx", "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["kind"] == "onnx"
    predicted = run("predict", "model.onnx", "test", "--csv", "p.csv", "--out", "overlays")
    assert predicted.returncode == 0, predicted.stderr
    rows = read_csv((tmp_path / "p.csv").read_text())
    expected = -fitted.score_samples([str(tmp_path / r["path"]) for r in rows])
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-4)
    assert all((tmp_path / r["overlay"]).is_file() for r in rows)
    evaluated = run("evaluate", "model.onnx", "--data", "test", "--report", "r.html")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "Image AUROC" in evaluated.stdout and (tmp_path / "r.html").is_file()
    refused = run("predict", "model.skpadim", "test")  # fit and export: tests/test_cli_edges.py
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr  # no traceback
    assert f"needs torch, which is not installed here: {_install.TORCH}" in refused.stderr
