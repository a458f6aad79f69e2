"""The measurement scripts in benchmarks/ still run against the library.

Their quick modes run here, in this process (each script's ``main``, as
``python benchmarks/SCRIPT --quick`` would run it, without an interpreter
and torch to start for each), and write their results as JSON, which is
read back: the machine is described, every table is there, every duration
is finite and positive, and speed.py saw every stage range the detector
marks for each batch. The timings themselves are never asserted: they
depend on the machine. Scripts whose point is a fresh process (peak memory,
allocator settings at start-up) keep their child processes.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_quick(run_benchmark, tmp_path):
    def run(script, *extra):
        out = tmp_path / "results.json"
        stdout = run_benchmark(script, "--quick", *extra, "--json", out)
        data = json.loads(out.read_text())
        env = data["environment"]
        assert env["cpu"] and env["cores"] >= 1 and isinstance(env["cpu_flags"], list), env
        assert env["versions"]["torch"] and env["versions"]["skpadim"], env
        assert env["command"].startswith(f"python benchmarks/{script} --quick"), env
        for key, tab in data["tables"].items():  # what was printed is in the JSON too
            assert tab["rows"] and all(len(row) == len(tab["header"]) for row in tab["rows"]), key
            assert tab["header"][0] in stdout and tab["rows"][0][0] in stdout, key
        return data

    return run


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_speed_quick_mode_times_every_stage(run_quick):
    data = run_quick("speed.py")
    assert set(data["tables"]) == {"resnet18/variants", "resnet18/fit stages", "resnet18/score_samples stages"}
    variants = [row[0] for row in data["tables"]["resnet18/variants"]["rows"]]
    assert variants == ["backbone (float32, NCHW: the baseline)", "backbone, profiled",
                        "backbone, channels_last", "backbone, channels_last + folded batch norm (as fit runs it)",
                        "fit, end to end", "fit, streaming loop only", "score_samples"]
    stages = [row[0] for row in data["tables"]["resnet18/fit stages"]["rows"]]
    assert "end: calibration (held-out Cholesky + maps)" in stages and stages[-1] == "total (measured)"
    result = data["results"]["resnet18"]
    n_batches = -(-result["n_images"] // result["batch_size"])
    assert n_batches >= 2  # several batches, so that per-batch ranges are counted
    for key in ("backbone", "backbone_profiled", "backbone_cl", "backbone_cl_fold", "fit", "score"):
        assert all(positive(r["total"]) for r in result["rounds"][key]), key
    for fit in result["rounds"]["fit"]:
        for stage in ("backbone", "embedding", "reservoir"):
            assert fit["calls"][stage] == n_batches and positive(fit["stages"][stage]), stage
        for stage in ("decode", "update", "precision", "calibration"):
            assert fit["calls"][stage] >= 1 and positive(fit["stages"][stage]), stage
        loop_stages = sum(fit["stages"][s] for s in ("decode", "backbone", "embedding", "reservoir", "update"))
        assert loop_stages <= fit["loop"] * (1 + 1e-6)
        assert fit["loop"] + fit["stages"]["precision"] + fit["stages"]["calibration"] <= fit["total"]
    for score in result["rounds"]["score"]:
        for stage in ("backbone", "embedding", "mahalanobis", "maps"):
            assert score["calls"][stage] == n_batches and positive(score["stages"][stage]), stage
        assert sum(score["stages"].values()) <= score["total"]
    assert all(positive(v) for v in result["ratios"].values())


def test_speed_batch_sweep_times_each_batch_size(run_quick):
    data = run_quick("speed.py", "--batch-sweep", "4", "8")
    rows = data["tables"]["resnet18/batch sizes"]["rows"]
    assert [row[0] for row in rows] == ["4", "8"]
    assert all(positive(float(cell.split()[0])) for row in rows for cell in row[1:])


def test_memory_quick_mode(run_quick):
    data = run_quick("memory.py")
    assert set(data["tables"]) == {"fit", "joblib"}
    cases = data["results"]["cases"]
    assert cases["small"]["n_samples_seen"] == 16 and cases["large"]["n_samples_seen"] == 48
    for key in ("small", "large"):
        case = cases[key]
        assert case["maxrss_fit_mb"] > cases["import"]["peak_rss_mb"] > 0
        assert case["maxrss_fit_mb"] >= max(rss for _, rss in case["rss_trace"]) - 1  # sampled <= peak
        assert len(case["rss_trace"]) >= 2 and positive(case["fit_s"])
    assert cases["load"]["scores"] == cases["small"]["scores"]
    assert data["tables"]["joblib"]["rows"][0][-1] == "yes"


def test_gpu_check_cpu_twin(run_quick):
    """The GPU check's own code path, on the CPU: the device run equals the CPU reference
    exactly, anomalib's maps match skpadim's as in the parity test, and every part (the
    bare backbone, the batch sizes, the large embedding, the one large fit) reports."""
    data = run_quick("gpu_check.py", "--device", "cpu")
    assert set(data["tables"]) == {"speed", "metrics", "parity", "throughput", "throughput large",
                                   "batch sizes", "wide", "huge"}
    speed = {row[0]: row for row in data["tables"]["speed"]["rows"]}
    assert set(speed) == {"skpadim on cpu", "anomalib on cpu", "skpadim on cpu, backbone_dtype=bfloat16",
                          "skpadim on cpu (reference)"}
    for row in speed.values():
        assert all(positive(float(c.rstrip("x"))) for c in row[1:] if c != "-"), row
    parity = {row[0]: [float(c) for c in row[1:]] for row in data["tables"]["parity"]["rows"]}
    assert parity["skpadim: cpu against cpu (reference)"] == [0.0, 0.0, 0.0]
    assert max(parity["cpu: skpadim against anomalib"][1:]) < 2e-3  # anomalib's extra 1e-5 I
    assert 0 < parity["cpu: backbone_dtype=bfloat16 against float32"][1] < 0.1
    metrics = {row[0]: [float(c) for c in row[1:]] for row in data["tables"]["metrics"]["rows"]}
    assert metrics["skpadim on cpu"] == metrics["skpadim on cpu (reference)"]
    assert np.allclose(metrics["skpadim on cpu"], metrics["anomalib on cpu"], atol=2e-3)
    for key in ("throughput", "throughput large"):
        rows = {(row[0], row[1]): row for row in data["tables"][key]["rows"]}
        for call in ("fit", "score_samples", "anomaly_map", "predict"):
            row = rows["float32", f"skpadim {call}"]
            assert row[2] == "32" and positive(float(row[3].replace(",", ""))) and positive(float(row[4])), row
            assert row[6].endswith("x") and positive(float(row[6].rstrip("x"))), row  # against anomalib
        assert rows["float32", "bare backbone (uint8 host array in)"][4] == "1.00"
        assert {"anomalib fit", "anomalib predict"} <= {name for _, name in rows}
    assert [row[0] for row in data["tables"]["batch sizes"]["rows"]] == ["4", "8"]
    wide = data["tables"]["wide"]["rows"]
    assert wide[0][0].startswith("skpadim") and wide[1][0].startswith("anomalib") and len(wide) == 3
    huge = data["tables"]["huge"]["rows"]
    assert huge[0][1] == "24" and positive(float(huge[0][3])) and float(huge[1][4].split()[0]) >= 0


@pytest.mark.parametrize(
    "script, expected",
    [
        ("cli_batch.py", ["check / fit", "score_images / score_samples"]),
        ("threads.py", ["throughput vs 1 thread", "anomaly_map"]),
        ("allocator.py", ["CPU-time speed-up vs defaults", "score_samples"]),
        pytest.param("distributed.py", ["cluster / one process", "Where the cluster fit",
                                        "Projection to 10 and 100 workers"], marks=pytest.mark.dask),
        pytest.param("export.py", ["onnxruntime int8", "openvino (IR folder)", "ONNX file"],
                     marks=[pytest.mark.onnx, pytest.mark.openvino]),
    ],
)
def test_other_quick_modes_run(script, expected, run_benchmark, request):
    extra = []
    if script == "distributed.py":  # the session's cluster, not one more of the script's own
        extra = ["--scheduler", request.getfixturevalue("dask_client").scheduler.address]
    stdout = run_benchmark(script, "--quick", *extra)
    for text in expected:
        assert text in stdout, f"{text!r} missing from the output of {script}:\n{stdout[-3000:]}"


def test_tiles_quick_mode(run_quick):
    data = run_quick("tiles.py")
    rows = data["tables"]["tiles"]["rows"]
    assert [row[1] for row in rows] == ["resize 224", "tiles, shared", "tiles, position"]
    for key, case in data["results"]["cases"].items():
        assert positive(case["fit_s"]) and positive(case["predict_s"]) and positive(case["peak_fit_mb"]), key
        assert all(0 <= case[m] <= 1 for m in ("image_auroc", "pixel_auroc", "aupro")), key
    shared, position = data["results"]["cases"]["64/tiles, shared"], data["results"]["cases"]["64/tiles, position"]
    assert shared["params"]["tile_size"] == position["params"]["tile_size"] == 32


def _check_pixel_threshold(data, name):
    gates = ("auto", "0.05", "labels")
    assert set(data["tables"]) == {f"{g}/{t}" for g in gates for t in ("data", "f1", "regions")} | {"cost"}
    for gate in gates:
        (res,) = data["results"][f"gate {gate}"]
        assert res["name"] == name
        rows = res["rows"]
        assert list(rows) == ["oracle", "best pixel_threshold_", "label-free", "calibrated (other half)",
                              "image threshold", "0.75 of own peak"]
        for rule, row in rows.items():
            assert 0 <= row["iou"] <= row["f1"] <= 1 and 0 <= row["found"] <= 1, rule
        # no pixel threshold beats the best one under the same gate, on the same images
        assert rows["label-free"]["f1"] <= rows["best pixel_threshold_"]["f1"] + 1e-12
        for f1 in res["calibrated_halves"]:
            assert 0 <= f1 <= 1
    (cost,) = data["results"]["cost"].values()
    assert positive(cost["map_s"]) and (math.isnan(cost["mask_s"]) or positive(cost["mask_s"]))
    return data


def test_pixel_threshold_quick_mode(run_quick, tmp_path):
    data = _check_pixel_threshold(run_quick("pixel_threshold.py", "--cache", str(tmp_path / "cache")),
                                  "quick-gen-128")
    for gate in ("auto", "0.05", "labels"):
        (res,) = data["results"][f"gate {gate}"]
        rows = res["rows"]
        # every generated defect is flagged and found; the label-free masks outline them far
        # better than the image threshold does (0.74-0.76x the oracle F1 when written)
        assert res["flagged_bad"] == 1.0 and rows["label-free"]["found"] == 1.0
        assert rows["label-free"]["f1"] >= 0.6 * res["oracle"] > rows["image threshold"]["f1"]


@pytest.mark.realdata
def test_pixel_threshold_on_magnetic_tile(magnetic_tile, run_benchmark, tmp_path):
    out = tmp_path / "results.json"
    stdout = run_benchmark("pixel_threshold.py", "--configs", "quick-mt", "--mt-root", magnetic_tile,
                        "--cache", tmp_path / "cache", "--json", out)
    assert "| quick-mt" in stdout
    _check_pixel_threshold(json.loads(out.read_text()), "quick-mt")
