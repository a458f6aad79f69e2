"""Running statistics: exact merging, subtraction and distances."""

import numpy as np
import pytest
import torch

from skpadim._gaussian import GaussianStats, mahalanobis


def _data(n, P=5, d=4, seed=0, offset=100.0):
    g = torch.Generator().manual_seed(seed)
    return offset + torch.randn(P, d, n, generator=g)


def _ref(x, eps):
    x = x.double().numpy()
    mean = x.mean(-1)
    prec = np.stack([np.linalg.inv(np.cov(x[p], ddof=1) + eps * np.eye(x.shape[1])) for p in range(len(x))])
    return mean, prec


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
    merged = a.copy().combine(b)
    whole = _stats([x])
    assert merged.n == 90
    np.testing.assert_allclose(merged.mean().numpy(), whole.mean().numpy(), rtol=1e-12)
    np.testing.assert_allclose(merged.precision(0.01).numpy(), whole.precision(0.01).numpy(), rtol=1e-4)


def test_subtract_undoes_merge():
    x = _data(60)
    whole = _stats([x])
    part = _stats([x[..., 45:]])
    rest = whole.copy().combine(part, sign=-1)
    ref = _stats([x[..., :45]])
    assert rest.n == 45
    np.testing.assert_allclose(rest.mean().numpy(), ref.mean().numpy(), rtol=1e-10)
    np.testing.assert_allclose(rest.precision(0.01).numpy(), ref.precision(0.01).numpy(), rtol=1e-4)
    with pytest.raises(ValueError, match="more images"):
        part.copy().combine(whole, sign=-1)


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
    via = s.distances_of(removed, 0.01, remove=_stats([removed]))
    np.testing.assert_allclose(via.numpy(), direct.numpy(), rtol=1e-6)


def test_single_sample_is_isotropic():
    x = _data(1)
    s = _stats([x])
    prec = s.precision(0.5).numpy()
    np.testing.assert_allclose(prec, np.broadcast_to(np.eye(4) / 0.5, prec.shape), rtol=1e-6)
