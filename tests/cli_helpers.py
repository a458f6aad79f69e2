"""Helpers of the command-line tests: run ``skpadim`` in subprocesses or in-process.

Subprocesses import the same ``skpadim`` as the tests (its folder goes first
on PYTHONPATH), so a checkout is tested as it is, whichever copy of the
package is installed.
"""

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import skpadim
from skpadim.cli import main

DEFECTS = ("scratch", "spot", "missing")
FAST = ["--weights", "none", "--image-size", "64"]
TIMEOUT = 300
_SOURCE = str(Path(skpadim.__file__).resolve().parent.parent)


def console_script():
    script = Path(sys.executable).parent / "skpadim"
    if script.is_file():
        return str(script)
    found = shutil.which("skpadim")
    if found is None:
        pytest.fail('The console script "skpadim" is not installed; run: python -m pip install -e ".[test]"')
    return found


def env(**extra):
    out = {k: v for k, v in os.environ.items() if k != "SKPADIM_DEBUG"}
    out["OMP_NUM_THREADS"] = "1"  # processes run side by side: no thread oversubscription
    out["PYTHONPATH"] = os.pathsep.join([_SOURCE] + [p for p in [out.get("PYTHONPATH")] if p])
    out.update(extra)
    return out


def argv_of(args):
    """``skpadim ARGS`` through the console script; ``["-m", ...]`` through ``python -m skpadim``."""
    args = [str(a) for a in args]
    if args[:1] == ["-m"]:
        return [sys.executable, "-m", "skpadim", *args[1:]]
    return [console_script(), *args]


# ------------------------------------------------------------ privileges

# Runs first in every child (a fresh, single-threaded process: no preexec_fn),
# then becomes the command with exec, keeping its pid for signals:
# * SIGINT back to its default: a shell without job control starts background
#   jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored;
# * with "1", file permissions apply even to root (see as_plain_user).
_LAUNCHER = """
import ctypes, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
if sys.argv[1] == "1" and os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
os.execv(sys.argv[2], sys.argv[2:])
"""


def launcher(argv, plain_user=False):
    """``argv`` run through the launcher above.

    ``plain_user=True``: root reads a ``chmod 000`` file anyway, because the
    capabilities CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH bypass permission
    checks. Dropping them from the bounding set before ``exec`` leaves a
    root child (CI runs as root) with an ordinary owner's rights: it still
    reads and writes its own files, and gets "Permission denied" on a
    mode-000 file. Not root: nothing to drop.
    """
    return [sys.executable, "-c", _LAUNCHER, "1" if plain_user else "0", *argv]


def permission_denied_works(tmp_path):
    """Whether a child started with ``plain_user=True`` is refused a mode-000 file.

    False where root cannot drop capabilities (no CAP_SETPCAP, as in some
    hardened containers): a file that root cannot read cannot be made there.
    """
    probe = tmp_path / "probe-locked"
    probe.write_bytes(b"x")
    probe.chmod(0)
    argv = launcher([sys.executable, "-c", f"open({str(probe)!r}, 'rb')"], plain_user=True)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    finally:
        probe.chmod(0o644)
        probe.unlink()
    return r.returncode != 0 and "PermissionError" in r.stderr


# ------------------------------------------------------------------- runs

def start(cwd, args, plain_user=False, **extra):
    """A running ``skpadim ARGS`` (Popen, text pipes) that SIGINT stops."""
    return subprocess.Popen(
        launcher(argv_of(args), plain_user), cwd=cwd, env=env(**extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run_many(cwd, commands, plain_user=False):
    """Run ``skpadim ARGS`` for each entry concurrently; return CompletedProcess-like results.

    An entry is a list of arguments, or ``(arguments, extra environment)``.
    ``["-m", ...]`` runs ``python -m skpadim ...`` instead of the script.
    """
    procs = []
    for entry in commands:
        args, extra = entry if isinstance(entry, tuple) else (entry, {})
        procs.append(start(cwd, args, plain_user=plain_user, **extra))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def run(cwd, *args, **extra):
    return run_many(cwd, [(list(args), extra)])[0]


def cli(capsys, *args):
    """``skpadim ARGS`` in-process: (exit status, stdout, stderr)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:  # argparse: --help, usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def one_thread():
    """In-process commands use one torch thread, as the subprocesses (OMP_NUM_THREADS=1).

    On a busy CPU, torch's batched linear algebra with several threads can
    slow down a thousandfold (threads waiting on each other); the tests must
    not depend on the load of the machine.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def read_csv(text):
    return list(csv.DictReader(io.StringIO(text)))
