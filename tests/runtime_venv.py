"""The inspection machine's environment: skpadim installed as docs/deploy.md says, no torch.

``python tests/runtime_venv.py DIR`` creates a fresh virtual environment in
DIR (no system site-packages) and installs this checkout in it with the
extras of the documented command, :data:`skpadim._install.RUNTIME`
(``pip install "skpadim[runtime]"``), from a copy of its files, so that the
checkout is left as it was. pip must accept it without an error. ``.ci/run``
builds it before the tests and passes DIR in ``SKPADIM_RUNTIME_VENV``;
without that variable, ``tests/test_torch_free.py`` builds one of its own
(which needs PyPI).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_FILES = ("pyproject.toml", "README.md", "skpadim")


def executable(env_dir, name):
    """The path of the program ``name`` of the environment at ``env_dir``."""
    sub = "Scripts" if os.name == "nt" else "bin"
    return str(Path(env_dir) / sub / (name + (".exe" if os.name == "nt" else "")))


def clean_environ():
    """The environment variables for the venv's programs: this checkout not on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "SKPADIM_DEBUG")}


def documented_extras():
    """The extras of the inspection machine's documented install ("runtime")."""
    sys.path.insert(0, str(REPO))
    try:
        from skpadim._install import RUNTIME
    finally:
        sys.path.pop(0)
    return re.fullmatch(r'pip install "skpadim\[([a-z,]+)\]"', RUNTIME).group(1)


def build(env_dir):
    """Create the environment at ``env_dir``; SystemExit with pip's words if pip complains."""
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "skpadim-src"
        src.mkdir()
        for name in _FILES:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / name, src / name)
        proc = subprocess.run(
            [executable(env_dir, "python"), "-m", "pip", "install", "--disable-pip-version-check",
             "--no-input", f"{src}[{documented_extras()}]"],
            capture_output=True, text=True, env=clean_environ(),
        )
    if proc.returncode != 0 or "ERROR" in proc.stderr:
        raise SystemExit(f"pip install into {env_dir} failed (status {proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return env_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python {sys.argv[0]} DIR")
    build(sys.argv[1])
    print(f"built {sys.argv[1]}")
