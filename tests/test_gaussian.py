"""Running statistics: exact merging, subtraction and distances."""

import numpy as np
import pytest
import torch

import skpadim._engine.gaussian as gaussian
import skpadim._engine.parallel as parallel
from skpadim._engine.distances import mahalanobis
from skpadim._engine.gaussian import BufferedUpdate, GaussianStats


def _data(n, P=5, d=4, seed=0, offset=100.0):
    g = torch.Generator().manual_seed(seed)
    return offset + torch.randn(P, d, n, generator=g)


def _ref(x, eps):
    x = x.double().numpy()
    mean = x.mean(-1)
    prec = np.stack([np.linalg.inv(np.cov(x[p], ddof=1) + eps * np.eye(x.shape[1])) for p in range(len(x))])
    return mean, prec


def _clone(s):
    return GaussianStats(s.n, s.shift.clone(), s.total.clone(), s.outer.clone())


def _stats(batches):
    s = GaussianStats.empty(batches[0].shape[0], batches[0].shape[1], "cpu")
    for b in batches:
        s.update(b.clone())
    return s


def test_large_offset_has_no_cancellation():
    x = _data(300, offset=1e4)  # variance 1 around 10,000: naive float32 sums fail
    s = _stats(list(x.split(32, dim=-1)))
    mean, prec = _ref(x, 0.01)
    np.testing.assert_allclose(s.mean().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(s.precision(0.01).numpy(), prec, rtol=1e-4, atol=1e-5)


def test_merge_equals_single_pass():
    x = _data(90)
    a = _stats([x[..., :40]])
    b = _stats([x[..., 40:70], x[..., 70:]])
    merged = _clone(a).combine(b)
    whole = _stats([x])
    assert merged.n == 90
    np.testing.assert_allclose(merged.mean().numpy(), whole.mean().numpy(), rtol=1e-12)
    np.testing.assert_allclose(merged.precision(0.01).numpy(), whole.precision(0.01).numpy(), rtol=1e-4)


def test_subtract_undoes_merge():
    x = _data(60)
    whole = _stats([x])
    part = _stats([x[..., 45:]])
    rest = _clone(whole).combine(part, sign=-1)
    ref = _stats([x[..., :45]])
    assert rest.n == 45
    np.testing.assert_allclose(rest.mean().numpy(), ref.mean().numpy(), rtol=1e-10)
    np.testing.assert_allclose(rest.precision(0.01).numpy(), ref.precision(0.01).numpy(), rtol=1e-4)
    with pytest.raises(ValueError, match="more images"):
        _clone(part).combine(whole, sign=-1)


def test_distances_match_explicit_formula():
    x = _data(50)
    s = _stats([x])
    mean, prec = _ref(x, 0.01)
    y = _data(3, seed=1)
    expected = np.sqrt(np.einsum("pdb,pde,peb->pb", y.numpy() - mean[..., None], prec, y.numpy() - mean[..., None]))
    np.testing.assert_allclose(s.distances_of(y, 0.01).numpy(), expected, rtol=1e-6)
    got = mahalanobis(y.clone(), torch.from_numpy(mean).float(), torch.from_numpy(prec).float())
    np.testing.assert_allclose(got.T.numpy(), expected, rtol=1e-3)


def test_distances_with_removed_images():
    x = _data(40)
    removed = x[..., :8]
    s = _stats([x])
    direct = _stats([x[..., 8:]]).distances_of(removed, 0.01)
    via = s.distances_of(removed, 0.01, held_out=True)
    np.testing.assert_allclose(via.numpy(), direct.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="leave out"):
        _stats([removed]).distances_of(removed, 0.01, held_out=True)


def _held_out_reference(x, k, eps, radius=0, grid=None):
    """Slow and plain: the Gaussians of images k: (numpy covariance + eps I, explicit
    inverse) scoring images :k, each patch's smallest distance over the window."""
    x = x.double().numpy()
    P, d, n = x.shape
    rest, held = x[..., k:], x[..., :k]
    out = np.full((P, k), np.inf)
    H, W = grid or (1, P)
    for q in range(P):  # the Gaussian at q meets the patch at q - step
        mean = rest[q].mean(-1)
        prec = np.linalg.inv(np.cov(rest[q], ddof=1) + eps * np.eye(d))
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                y, xx = q // W - dy, q % W - dx
                if 0 <= y < H and 0 <= xx < W:
                    r = held[y * W + xx] - mean[:, None]
                    dist = np.sqrt(np.einsum("ik,ij,jk->k", r, prec, r))
                    out[y * W + xx] = np.minimum(out[y * W + xx], dist)
    return out


@pytest.mark.parametrize("openblas", [False, True])
@pytest.mark.parametrize("radius, grid", [(0, None), (1, (4, 6))])
def test_held_out_distances_match_a_plain_reference(monkeypatch, openblas, radius, grid):
    """Left-out images are scored by the Gaussians of the others, with the same epsilon,
    also in directions where the ridge dominates, chunked over worker threads."""
    P, d, n, k = 24, 12, 60, 9
    x = _data(n, P=P, d=d, seed=4)
    x[:, : d // 2] = 100 + (x[:, : d // 2] - 100) * 0.02  # variance 4e-4, below epsilon
    s = _stats([x[..., :25], x[..., 25:]])
    monkeypatch.setattr(gaussian, "_chunk_size", lambda d, device, itemsize=8, budget=None: 5)
    _force_openblas(monkeypatch, openblas)
    dist = s.distances_of(x[..., :k].clone(), 0.01, held_out=True, radius=radius, grid=grid)
    np.testing.assert_allclose(dist.numpy(), _held_out_reference(x, k, 0.01, radius, grid), rtol=2e-5)


def test_single_sample_is_isotropic():
    x = _data(1)
    s = _stats([x])
    prec = s.precision(0.5).numpy()
    np.testing.assert_allclose(prec, np.broadcast_to(np.eye(4) / 0.5, prec.shape), rtol=1e-6)


def test_blocked_update_matches_reference(monkeypatch):
    # d = 8 split into round(8 / 3) = 3 column blocks: only the upper blocks are computed.
    monkeypatch.setattr(gaussian, "_BLOCK", 3)
    x = _data(40, d=8)
    s = _stats(list(x.split(7, dim=-1)))
    mean, prec = _ref(x, 0.01)
    assert not s.outer[:, 5:, :2].any()  # a block below the diagonal was never written
    np.testing.assert_allclose(s.mean().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(s.precision(0.01).numpy(), prec, rtol=1e-4, atol=1e-5)


def test_only_the_upper_triangle_is_read():
    x = _data(30)
    s = _stats([x])
    ref = s.precision(0.01).numpy()
    noisy = _clone(s)
    noisy.outer += torch.randn(noisy.outer.shape).tril(-1) * 1e3
    np.testing.assert_array_equal(noisy.precision(0.01).numpy(), ref)
    y = _data(3, seed=1)
    np.testing.assert_array_equal(noisy.distances_of(y, 0.01).numpy(), s.distances_of(y, 0.01).numpy())


@pytest.mark.parametrize("sizes", [[1, 5, 70, 3], [4, 4, 4], [9], [2, 2, 2, 2, 2, 2, 2, 1]])
def test_buffered_update_equals_one_update(sizes):
    x = _data(sum(sizes), d=6)
    whole = _stats([x])
    s = GaussianStats.empty(5, 6, "cpu")
    buf = BufferedUpdate(s, width=4)
    for part in x.split(sizes, dim=-1):
        buf.add(part.clone())
    buf.flush()
    assert s.n == whole.n
    np.testing.assert_allclose(s.mean().numpy(), whole.mean().numpy(), rtol=1e-10)
    np.testing.assert_allclose(s.precision(0.01).numpy(), whole.precision(0.01).numpy(), rtol=1e-4)


def test_threaded_chunks_equal_one_chunk(monkeypatch):
    x = _data(50, P=37)
    s = _stats([x])
    y = _data(4, P=37, seed=2)
    one = s.precision(0.01), s.distances_of(y, 0.01), s.distances_of(x[..., :4], 0.01, held_out=True)
    monkeypatch.setattr(gaussian, "_CHUNK_BYTES", {"cpu": 8 * 4 * 4 * 3})  # 3 positions per chunk
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with torch.inference_mode():  # as in fit: the workers must inherit it
            s = _stats([x])
            many = s.precision(0.01), s.distances_of(y, 0.01), s.distances_of(x[..., :4], 0.01, held_out=True)
            _clone(s).combine(s)
        assert torch.get_num_threads() == 3  # restored
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_failing_chunk_raises_and_restores_threads(monkeypatch):
    x = _data(20, P=12)
    s = _stats([x])
    s.outer[7].fill_(-1.0)  # not positive definite at position 7
    monkeypatch.setattr(gaussian, "_CHUNK_BYTES", {"cpu": 8 * 4 * 4 * 2})
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="positive definite"):
        s.precision(0.01)
    assert torch.get_num_threads() == threads


def test_fit_on_threaded_chunks_equals_one_chunk(monkeypatch, images):
    from conftest import SMALL

    from skpadim import PadimDetector

    one = PadimDetector(**SMALL).fit(images)
    monkeypatch.setattr(gaussian, "_CHUNK_BYTES", {"cpu": 8 * 20 * 20 * 5})  # 5 of 64 positions
    monkeypatch.setattr(BufferedUpdate, "WIDTH", 6)  # batches of 4 regrouped by 6
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        many = PadimDetector(**SMALL).fit(images)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(many.precision_, one.precision_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(many.offset_, one.offset_, rtol=1e-5)
    np.testing.assert_allclose(many.score_samples(images[:3]), one.score_samples(images[:3]), rtol=1e-5)


def test_an_error_cancels_the_chunks_not_started():
    import time

    calls = []

    def fn(a, b):
        calls.append(a)
        if a == 0:
            raise ValueError("chunk 0 failed")
        time.sleep(0.01)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="chunk 0"):
            parallel.for_chunks(200, 1, "cpu", fn)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) < 20  # not all 200 chunks ran after the failure


def test_concurrent_callers_restore_the_thread_count(monkeypatch):
    import threading

    x = _data(30, P=24)
    s = _stats([x])
    expected = s.precision(0.01)
    monkeypatch.setattr(gaussian, "_CHUNK_BYTES", {"cpu": 8 * 4 * 4 * 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(s.precision(0.01))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        workers = [threading.Thread(target=work) for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert torch.get_num_threads() == 2  # not left at the workers' 1
    finally:
        torch.set_num_threads(threads)
    assert not errors
    assert len(results) == 60
    for r in results:
        np.testing.assert_array_equal(r.numpy(), expected.numpy())


# ------------------------------------------------------- OpenBLAS end of fit


def _force_openblas(monkeypatch, on):
    import skpadim._engine.lapack as lapack

    assert lapack._routines() is not None, "scipy's LAPACK is not OpenBLAS here"
    monkeypatch.setattr(lapack, "enabled", lambda device: on)


@pytest.mark.parametrize("covariance", ["sample", "oas"])
def test_openblas_end_of_fit_equals_torch_lapack(monkeypatch, covariance):
    """The same precisions and held-out distances through scipy's OpenBLAS as through
    torch's LAPACK, with the chunks shared out to several worker threads."""
    P, d = 40, 24
    x = _data(60, P=P, d=d, seed=3)
    stats = _stats([x[..., :30], x[..., 30:]])
    held = x[..., :9].clone()
    monkeypatch.setattr(gaussian, "_chunk_size", lambda d, device, itemsize=8, budget=None: 3)
    results = {}
    for on in (False, True):
        _force_openblas(monkeypatch, on)
        results[on] = (stats.precision(0.01, covariance=covariance),
                       stats.distances_of(held, 0.01, held_out=True, covariance=covariance),
                       stats.distances_of(held, 0.01, radius=1, grid=(5, 8), covariance=covariance))
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))
    ref_mean, ref_prec = _ref(x, 0.01)
    if covariance == "sample":
        np.testing.assert_allclose(results[True][0].numpy(), ref_prec, rtol=1e-4, atol=1e-4 * np.abs(ref_prec).max())


def test_openblas_refuses_a_matrix_that_is_not_positive_definite(monkeypatch):
    _force_openblas(monkeypatch, True)
    stats = _stats([_data(20, P=4, d=6)])
    stats.outer[2].diagonal().sub_(1e6)
    with pytest.raises(ValueError, match="not positive definite.*epsilon=0.01"):
        stats.precision(0.01)


def test_openblas_only_where_it_runs_one_thread_on_a_cpu_other_than_intel(monkeypatch):
    import skpadim._engine.lapack as lapack

    controller = lapack._routines()[3]
    monkeypatch.setattr(lapack, "_intel_cpu", lambda: False)
    original = controller.get_num_threads()
    try:
        controller.set_num_threads(2)
        assert not lapack.enabled("cpu")  # its threads would compete with the workers
        controller.set_num_threads(1)
        assert lapack.enabled("cpu") and lapack.enabled(torch.device("cpu"))
        assert not lapack.enabled("cuda") and not lapack.enabled("meta")
        monkeypatch.setattr(lapack, "ALLOWED", False)
        assert not lapack.enabled("cpu")
        monkeypatch.setattr(lapack, "ALLOWED", True)
        monkeypatch.setattr(lapack, "_intel_cpu", lambda: True)  # MKL is the faster one there
        assert not lapack.enabled("cpu")
    finally:
        controller.set_num_threads(original)


def test_the_command_sets_only_scipys_openblas_to_one_thread():
    """single_threaded_process changes scipy's OpenBLAS, not numpy's nor torch's (a
    subprocess: the setting is process-wide)."""
    import subprocess
    import sys

    code = (
        "import numpy, scipy.linalg, threadpoolctl, torch\n"
        "from skpadim._engine import lapack\n"
        "before = {i['filepath']: i['num_threads'] for i in threadpoolctl.threadpool_info()}\n"
        "t = torch.get_num_threads()\n"
        "assert lapack.single_threaded_process()\n"
        "after = {i['filepath']: i['num_threads'] for i in threadpoolctl.threadpool_info()}\n"
        "changed = {p for p in after if after[p] != before[p]}\n"
        "assert all('scipy.libs' in p or 'scipy_openblas-' in p for p in changed), changed\n"
        "assert lapack._routines()[3].get_num_threads() == 1 and torch.get_num_threads() == t\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
