"""The measurement scripts in benchmarks/ still run against the library.

They reach into the library's internals to time its phases, so a change
there can break them silently; their quick modes are run here (the numbers
themselves are not checked: timings are never asserted in tests).
"""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script, expected",
    [
        ("speed.py", ["fit, streaming loop only", "score_samples", "end: calibration"]),
        ("precision_kernels.py", ["cholesky_inverse [library]", "distances_of(64 images, held_out=True)"]),
        ("memory.py", ["joblib"]),
        pytest.param("export.py", ["onnxruntime int8", "openvino (IR folder)", "ONNX file"],
                     marks=[pytest.mark.onnx, pytest.mark.openvino]),
    ],
)
def test_quick_mode_runs(script, expected, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    for text in expected:
        assert text in proc.stdout, f"{text!r} missing from the output of {script}:\n{proc.stdout[-3000:]}"
