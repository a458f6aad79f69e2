import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

#: The device of the shared settings: ``--skpadim-device`` or $SKPADIM_TEST_DEVICE (cpu by default).
DEVICE = os.environ.get("SKPADIM_TEST_DEVICE", "cpu")

# Small, fast settings: random (seeded) ResNet-18 weights, 32 px images.
SMALL = dict(weights=None, image_size=32, n_features=20, batch_size=4, random_state=0, device=DEVICE)


def pytest_addoption(parser):
    parser.addoption(
        "--skpadim-device", default=None, metavar="DEVICE",
        help="device of the shared test settings (tests/conftest.py's SMALL): cpu (default) or cuda; "
             "also $SKPADIM_TEST_DEVICE. Tests marked cpu_only are skipped on another device.",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cpu_only(reason): checks what only a CPU does (its kernels, layouts, warnings); "
        "skipped when the shared settings run on another device (--skpadim-device)")
    device = config.getoption("--skpadim-device", default=None)
    if device:
        SMALL["device"] = device
        os.environ["SKPADIM_TEST_DEVICE"] = device  # the tests' child processes too
    if SMALL["device"].startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError(f"device {SMALL['device']!r} asked for, but torch sees no CUDA GPU here.")


def pytest_collection_modifyitems(config, items):
    if SMALL["device"] == "cpu":
        return
    for item in items:
        marker = item.get_closest_marker("cpu_only")
        if marker is not None:
            why = marker.args[0] if marker.args else "CPU behaviour"
            item.add_marker(pytest.mark.skip(reason=f"CPU only ({why}); the shared settings run on "
                                                    f"{SMALL['device']}"))


@pytest.fixture(scope="session", autouse=True)
def full_float32_on_cuda():
    """On CUDA, convolutions and matrix products in full float32 for the whole session.

    cuDNN runs float32 convolutions in TF32 by default (about 1e-3 relative),
    which the CPU references and tolerances of the suite were not made for;
    the library leaves the setting as it finds it, and benchmarks/gpu_check.py
    measures the default. Restored at the end. The command-line tests' subprocesses
    (which run on the GPU too, ``device="auto"``) get ``NVIDIA_TF32_OVERRIDE=0``,
    the CUDA libraries' own switch, so that their scores compare with this process's.
    """
    if not SMALL["device"].startswith("cuda"):
        yield
        return
    import torch

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    override = os.environ.get("NVIDIA_TF32_OVERRIDE")
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
        if override is None:
            os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
        else:
            os.environ["NVIDIA_TF32_OVERRIDE"] = override


def textured(n, size=32, seed=0, channels=3):
    """Images of one smooth random texture family, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        phase = rng.uniform(0, 2 * np.pi, 2)
        base = 0.5 + 0.2 * np.sin(12 * xx + phase[0]) * np.cos(9 * yy + phase[1])
        img = base + 0.05 * rng.standard_normal((size, size))
        out.append(img)
    X = (np.clip(np.stack(out), 0, 1) * 255).astype(np.uint8)
    if channels == 3:
        X = np.repeat(X[..., None], 3, axis=-1)
        X[..., 1] = X[..., 1] // 2 + 60
    return X


@pytest.fixture(scope="session")
def images():
    return textured(24)


@pytest.fixture(scope="session")
def fitted(images):
    from skpadim import PadimDetector

    return PadimDetector(**SMALL).fit(images)


def magnetic_tile_root():
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "..", "shared", "data", "magnetic-tile")
    return os.environ.get("SKPADIM_MAGNETIC_TILE", default)


@pytest.fixture(scope="session")
def magnetic_tile():
    """Root folder of the Magnetic Tile data set, for the tests marked ``realdata``.

    Skipped with ``SKPADIM_SKIP_REALDATA=1``; a missing data set is a failure,
    not a skip.
    """
    if os.environ.get("SKPADIM_SKIP_REALDATA") == "1":
        pytest.skip("SKPADIM_SKIP_REALDATA=1: real-data tests skipped.")
    root = Path(magnetic_tile_root()).resolve()
    if not (root / "MT_Free" / "Imgs").is_dir():
        pytest.fail(
            f"Magnetic Tile data set not found at '{root}' (no MT_Free/Imgs folder). "
            "Set SKPADIM_MAGNETIC_TILE to its folder, or SKPADIM_SKIP_REALDATA=1 to "
            "skip the real-data tests."
        )
    return root


@pytest.fixture(scope="session")
def dask_client():
    """A client of two 1-thread worker processes: CI's cluster ($SKPADIM_DASK_SCHEDULER, started
    by .ci/run), else one LocalCluster for the whole session."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    address = os.environ.get("SKPADIM_DASK_SCHEDULER")
    if address:
        with Client(address, set_as_default=False) as c:
            yield c
        return
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as c:
            yield c


def assert_close_regions(got, expected, rtol=1e-4):
    """The same defect regions from maps that agree to float32 round-off (another batch,
    process or engine): the same number per image; boxes within a pixel, areas within 2%
    and two pixels, map values to ``rtol`` (a pixel at the level may fall either side)."""
    assert [len(r) for r in got] == [len(r) for r in expected]
    for gs, es in zip(got, expected):
        for g, e in zip(gs, es):
            assert max(abs(a - b) for a, b in zip(g.box, e.box)) <= 1, (g, e)
            assert abs(g.area - e.area) <= 2 + 0.02 * e.area, (g, e)
            assert abs(g.peak - e.peak) <= rtol * abs(e.peak) and abs(g.mean - e.mean) <= rtol * abs(e.peak)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_benchmark(monkeypatch, tmp_path):
    """``run(script, *args)``: ``python benchmarks/SCRIPT args`` run in this process (the
    script's ``main(args)``, from ``tmp_path``, without an interpreter and torch to start);
    returns what it printed."""
    # Last on the path: benchmarks/distributed.py must not hide Dask's package of that name.
    monkeypatch.setattr(sys, "path", [*sys.path, str(BENCHMARKS)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")

    def run(script, *args):
        from _common import load_script

        args = [str(a) for a in args]
        monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *args])  # the command it reports
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = load_script(BENCHMARKS / script).main(args)
        assert not code, f"{script} returned {code}:\n{out.getvalue()[-3000:]}"
        return out.getvalue()

    return run
