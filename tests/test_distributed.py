"""Fit and score on a Dask cluster: the same results as one process, failures handled.

The cluster is the one at ``$SKPADIM_DASK_SCHEDULER`` (``.ci/run`` starts a
scheduler and two 1-thread worker processes), else a LocalCluster of two
1-thread worker processes started here, once for the module; the tests of
partitioning use an in-process cluster. The test that kills a worker runs
last: the worker's nanny starts a new one.
"""

import copy
import csv
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import cli
from conftest import SMALL, assert_close_regions, textured
from PIL import Image

import dask.bag as db
import distributed
from distributed import Client, LocalCluster

from skpadim import PadimDetector
from skpadim import distributed as skd
from skpadim.distributed import _worker

pytestmark = pytest.mark.dask

N = 100  # more than the 64 images of the calibration sample and of the update buffer
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS = dict(SMALL, n_features=12, batch_size=7, device="auto")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """N good images in one folder, then 20 more in another."""
    root = tmp_path_factory.mktemp("images")
    for i, img in enumerate(textured(N + 20, seed=3)):
        sub = root / ("good" if i < N else "more")
        sub.mkdir(exist_ok=True)
        Image.fromarray(img).save(sub / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def paths(folder):
    return [str(p) for sub in ("good", "more") for p in sorted((folder / sub).iterdir())]


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


@pytest.fixture(scope="module")
def inproc():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as c:
            yield c


@pytest.fixture(scope="module")
def local(paths):
    return PadimDetector(**PARAMS).fit(paths[:N])


def _images_fitted(client):
    """Images each worker process streamed so far (all fits)."""
    counts = client.run(lambda: sum(_worker.images_fitted.values()))
    return counts


def assert_same_model(det, ref, offset=True):
    s, r = det._state, ref._state
    assert det.n_samples_seen_ == ref.n_samples_seen_
    np.testing.assert_array_equal(det.feature_index_, ref.feature_index_)
    np.testing.assert_allclose(det.mean_, ref.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.stats.mean(), r.stats.mean(), rtol=1e-6, atol=1e-6)
    scale = np.abs(ref.precision_).max()
    np.testing.assert_allclose(det.precision_, ref.precision_, rtol=1e-4, atol=1e-5 * scale)
    if offset:
        # The very same calibration images (keys and positions in X), scored alike.
        np.testing.assert_array_equal(s.sample.keys, r.sample.keys)
        np.testing.assert_array_equal(s.sample.ids, r.sample.ids)
        np.testing.assert_allclose(det.calibration_scores_, ref.calibration_scores_, rtol=1e-5)
        assert det.offset_ == pytest.approx(ref.offset_, rel=1e-5)
        assert s.rng.bit_generator.state == r.rng.bit_generator.state


def test_fit_equals_one_process_fit_and_uses_both_workers(client, paths, local):
    before = _images_fitted(client)
    det = skd.fit(PadimDetector(**PARAMS), paths[:N], client=client, partition_size=20,
                  split_every=3, position_blocks=3)
    after = _images_fitted(client)
    streamed = {w: after[w] - before.get(w, 0) for w in after}
    assert all(v > 0 for v in streamed.values()) and len(streamed) == 2, streamed
    assert sum(streamed.values()) == N  # each image streamed once
    assert_same_model(det, local)
    more = paths[N:]
    np.testing.assert_allclose(det.score_samples(more), local.score_samples(more), rtol=1e-5)
    # An ordinary detector: it pickles, and partial_fit goes on as after fit.
    assert_same_model(pickle.loads(pickle.dumps(det)), local)
    ref = pickle.loads(pickle.dumps(local)).partial_fit(more)
    assert_same_model(det.partial_fit(more), ref)


def test_scores_equal_local_ones(client, paths, local):
    X = paths[N - 40:]
    expected = local.score_samples(X)
    np.testing.assert_allclose(skd.score_samples(local, X, client=client, partition_size=9),
                               expected, rtol=1e-6)
    model = skd.scatter(local, client=client)  # once for several calls
    try:
        np.testing.assert_allclose(skd.score_samples(model, X[:5], client=client), expected[:5], rtol=1e-6)
    finally:
        model.release()


def test_regions_and_masks_on_the_workers(client, paths, local):
    det = copy.deepcopy(local)
    X = paths[N - 14:N]
    det.offset_ = float(np.median(det.score_samples(X)))  # half of them flagged
    expected = det.defect_regions(X)
    assert 0 < sum(map(bool, expected)) < len(X)
    assert_close_regions(skd.defect_regions(det, X, client=client, partition_size=7), expected)
    results = list(skd.score_files(det, X, client=client, with_regions=True, with_masks=True, partition_size=7))
    assert_close_regions([r.regions for r in results], expected)
    for r, m in zip(results, det.anomaly_mask(X)):
        assert r.map is None and r.mask.shape == m.shape and np.mean(r.mask != m) < 0.01


def test_blocks_of_positions_change_no_bit(inproc, paths, local):
    bag = db.from_sequence(paths[:N], npartitions=3)
    one = skd.fit(PadimDetector(**PARAMS), bag, client=inproc, partition_size=N, position_blocks=1)
    blocks = skd.fit(PadimDetector(**PARAMS), paths[:N], client=inproc, partition_size=N,
                     position_blocks=5)
    for det in (one, blocks):
        assert_same_model(det, local)
    # A block of positions is factorized with the same arithmetic as all of them.
    np.testing.assert_array_equal(blocks.precision_, one.precision_)
    np.testing.assert_array_equal(blocks.calibration_scores_, one.calibration_scores_)


def test_bad_input(inproc, paths, local, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    X = paths[:12] + [str(broken)] + paths[12:20]
    with pytest.raises(ValueError, match=r"broken\.png"):
        skd.fit(PadimDetector(**PARAMS), X, client=inproc, partition_size=5)
    with pytest.raises(ValueError, match=r"broken\.png"):
        skd.score_samples(local, X, client=inproc, partition_size=5)
    with pytest.raises(ValueError, match=r"X\[1\] must be an image file path"):
        skd.fit(PadimDetector(**PARAMS), [paths[0], 3], client=inproc)
    with pytest.raises(ValueError, match="X must be a list of image file paths"):
        skd.fit(PadimDetector(**PARAMS), textured(4), client=inproc)
    with pytest.raises(ValueError, match="'split_every' parameter must be an int >= 2"):
        skd.fit(PadimDetector(**PARAMS), paths, client=inproc, split_every=1)
    with pytest.raises(ValueError, match="'position_blocks' parameter must be 'auto' or an int"):
        skd.fit(PadimDetector(**PARAMS), paths, client=inproc, position_blocks=0)
    with pytest.raises(ValueError, match="'partition_size' parameter must be None or an int >= 1"):
        skd.score_samples(local, paths, client=inproc, partition_size=0)
    with pytest.raises(ValueError, match="'n_features' parameter of PadimDetector"):
        skd.fit(PadimDetector(**dict(PARAMS, n_features=0)), paths, client=inproc)
    with pytest.raises(ValueError, match=r"shift_tolerance=1 is not supported with tile_size=16"):
        skd.fit(PadimDetector(**dict(PARAMS, tile_size=16, shift_tolerance=1)), paths, client=inproc)
    with pytest.raises(ValueError, match="No Dask client"):
        skd.fit(PadimDetector(**PARAMS), paths)
    for address in ("tcp://127.0.0.1:1", "foo://bar"):
        with pytest.raises(ConnectionError, match="Could not connect to the Dask scheduler at") as info:
            skd.connect(address, timeout=1)
        assert "\n" not in str(info.value) and repr(address) in str(info.value)


def test_importing_skpadim_and_its_command_line_does_not_import_dask():
    code = ("import sys, skpadim, skpadim.cli\nskpadim.cli.build_parser()\n"
            "assert not {'dask', 'distributed'} & set(sys.modules), 'dask imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_command_line(client, capsys, folder, paths, local, tmp_path):
    address = client.scheduler.address
    new = tmp_path / "new"
    new.mkdir()
    for p in paths[N:N + 6]:
        os.link(p, new / os.path.basename(p))
    (new / "zz-broken.png").write_bytes(b"not an image")
    model = tmp_path / "m.skpadim"
    status, out, err = cli(capsys, "fit", folder / "good", "--out", model, "--weights", "none",
                           "--image-size", "32", "--n-features", "12", "--seed", "0",
                           "--batch-size", "7", "-q", "--scheduler", address)
    assert status == 0, err
    assert "Fitting on the Dask cluster at" in err
    assert_same_model(PadimDetector.load(model), local)
    status, out, err = cli(capsys, "predict", model, new, "-q", "--scheduler", address)
    assert status == 3, err  # one unreadable file: named, the others scored
    assert "zz-broken.png" in err
    rows = list(csv.reader(out.splitlines()))
    assert [r[0] for r in rows[1:]] == sorted(str(p) for p in new.iterdir())
    assert rows[-1][2] == "error" and rows[-1][-1]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:-1]],
                               -local.score_samples([r[0] for r in rows[1:-1]]), rtol=1e-5)
    status, _, err = cli(capsys, "predict", model, new, "--scheduler", "tcp://127.0.0.1:1")
    assert status == 1
    line, = err.strip().splitlines()
    assert line.startswith("skpadim: error: Could not connect to the Dask scheduler at 'tcp://127.0.0.1:1'")


def test_a_killed_worker_changes_nothing(client, paths, local, tmp_path):
    """A worker process dies right after streaming its first partition: Dask
    recomputes what it held, and every image is counted once.

    Its nanny starts a new worker; the test waits for it, so that the cluster
    is whole again afterwards.
    """
    marker = tmp_path / "killed"

    class KillOnce(distributed.WorkerPlugin):
        def setup(self, worker):
            self.address = worker.address

        def transition(self, key, start, finish, **kwargs):
            name = key[0] if isinstance(key, tuple) else key
            if finish == "memory" and str(name).endswith("-partition") and not marker.exists():
                marker.write_text(self.address)
                os._exit(1)

    client.register_plugin(KillOnce(), name="skpadim-test-kill-once")
    try:
        det = skd.fit(PadimDetector(**PARAMS), paths[:N], client=client, partition_size=20)
    finally:
        client.unregister_worker_plugin("skpadim-test-kill-once")
        client.wait_for_workers(2, timeout=120)
    assert marker.exists()
    assert marker.read_text() not in client.scheduler_info()["workers"]  # it did die
    assert_same_model(det, local)


def test_accuracy_options_are_fitted_as_in_one_process(inproc, paths):
    # neighbourhood changes the embedding on the workers, image_score the calibration scores.
    params = dict(PARAMS, neighbourhood=3, image_score=0.05)
    local = PadimDetector(**params).fit(paths[:N])
    det = skd.fit(PadimDetector(**params), paths[:N], client=inproc, partition_size=25)
    assert_same_model(det, local)
    default = skd.fit(PadimDetector(**PARAMS), paths[:N], client=inproc, partition_size=N)
    assert np.abs(det.calibration_scores_ - default.calibration_scores_).max() > 1e-3
