"""One Gaussian per patch position: mergeable sufficient statistics and distances.

The running statistics of each position are the count ``n``, a fixed shift
``c`` (the first batch's mean, rounded to float32), the sum of the shifted
embeddings ``s = sum(x - c)`` (float64) and the sum of their outer products
``S = sum((x - c)(x - c)^T)`` (float32, updated with one batched GEMM per
batch). Because ``c`` is close to the mean, ``S - s s^T / n`` has no
catastrophic cancellation; the covariance and its Cholesky factorization are
formed in float64, one chunk of positions at a time.

Statistics with different shifts merge exactly (and can be subtracted), so
fits can be split over chunks, processes or machines.
"""

import contextlib

import torch

# Positions per chunk when forming covariances in float64: bounds the
# temporary memory to CHUNK * d * d * 8 bytes * a few.
_CHUNK = 128


@contextlib.contextmanager
def _one_thread(device):
    """Run batched small-matrix LAPACK calls single-threaded on the CPU.

    torch loops over the batch and calls LAPACK once per d x d matrix; with
    several intra-op threads each call pays a parallel-region start-up that
    dwarfs the work. Measured for 3136 matrices of 100 x 100 (Cholesky +
    solve): 1.8 s on one thread against 5-18 s on two (busier machines are
    hit harder).
    """
    if torch.device(device).type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class GaussianStats:
    """Sufficient statistics of P Gaussians of dimension d (torch tensors)."""

    def __init__(self, n, shift, total, outer):
        self.n = int(n)
        self.shift = shift  # (P, d) float32
        self.total = total  # (P, d) float64
        self.outer = outer  # (P, d, d) float32

    @classmethod
    def empty(cls, n_positions, dim, device):
        return cls(
            0,
            torch.zeros(n_positions, dim, device=device),
            torch.zeros(n_positions, dim, dtype=torch.float64, device=device),
            torch.zeros(n_positions, dim, dim, device=device),
        )

    @property
    def shape(self):
        return tuple(self.outer.shape[:2])

    def update(self, emb):
        """Add a batch ``emb`` of shape (P, d, B), float32. ``emb`` is overwritten."""
        B = emb.shape[-1]
        if B == 0:
            return
        if self.n == 0:
            self.shift = emb.mean(-1)
        emb.sub_(self.shift[..., None])
        self.total += emb.sum(-1, dtype=torch.float64)
        self.outer.baddbmm_(emb, emb.mT)
        self.n += B

    def _recentered(self, shift):
        """``(delta, total)``: shift change and the sum of ``x - shift``."""
        delta = self.shift.double() - shift.double()  # x - shift = (x - c) + delta
        return delta, self.total + self.n * delta

    def combine(self, other, sign=1):
        """Add (sign=1) or remove (sign=-1) the images of ``other`` in place."""
        if other.n == 0:
            return self
        if self.n == 0 and sign > 0:
            self.n = other.n
            self.shift = other.shift.clone()
            self.total = other.total.clone()
            self.outer = other.outer.clone()
            return self
        if sign < 0 and other.n > self.n:
            raise ValueError("Cannot remove more images than the statistics hold.")
        delta, o_total = other._recentered(self.shift)
        s = other.total
        for a in range(0, self.outer.shape[0], _CHUNK):
            b = a + _CHUNK
            dl, sl = delta[a:b], s[a:b]
            corr = other.outer[a:b].double()
            corr += dl[:, :, None] * sl[:, None, :]
            corr += sl[:, :, None] * dl[:, None, :]
            corr += other.n * dl[:, :, None] * dl[:, None, :]
            self.outer[a:b] += (sign * corr).to(self.outer.dtype)
        self.total += sign * o_total
        self.n += sign * other.n
        return self

    def copy(self):
        return GaussianStats(self.n, self.shift.clone(), self.total.clone(), self.outer.clone())

    def to(self, device):
        return GaussianStats(
            self.n, self.shift.to(device), self.total.to(device), self.outer.to(device)
        )

    def mean(self):
        """(P, d) float64."""
        return self.shift.double() + self.total / self.n

    def _covariance_chunk(self, a, b, epsilon):
        """Unbiased sample covariance + epsilon * I of positions a:b, float64.

        With a single image the sample covariance is taken as zero, so the
        Gaussian becomes isotropic with variance ``epsilon``.
        """
        n = self.n
        s = self.total[a:b]
        upper = self.outer[a:b].double().triu()
        cov = upper + upper.triu(1).mT
        cov -= s[:, :, None] * s[:, None, :] / n
        cov /= max(n - 1, 1)
        if n == 1:
            cov.zero_()
        cov.diagonal(dim1=-2, dim2=-1).add_(epsilon)
        return cov

    def _cholesky(self, cov, epsilon):
        L, info = torch.linalg.cholesky_ex(cov)
        if int(info.max()) > 0:
            raise ValueError(
                "The regularized covariance is not positive definite at some patch "
                f"positions (epsilon={epsilon}); increase epsilon."
            )
        return L

    def precision(self, epsilon, dtype=torch.float32):
        """(P, d, d) inverse of covariance + epsilon * I, via Cholesky."""
        P, d = self.shape
        out = torch.empty(P, d, d, dtype=dtype, device=self.outer.device)
        with _one_thread(self.outer.device):
            for a in range(0, P, _CHUNK):
                b = min(a + _CHUNK, P)
                L = self._cholesky(self._covariance_chunk(a, b, epsilon), epsilon)
                # cholesky_solve against I: several times faster than cholesky_inverse.
                eye = torch.eye(d, dtype=L.dtype, device=L.device).expand(b - a, d, d)
                out[a:b] = torch.cholesky_solve(eye, L).to(dtype)
        return out

    def slice(self, a, b):
        """Statistics of positions a:b (views, no copy)."""
        return GaussianStats(self.n, self.shift[a:b], self.total[a:b], self.outer[a:b])

    def distances_of(self, emb, epsilon, remove=None):
        """Mahalanobis distances (P, B) of ``emb`` (P, d, B) under these Gaussians.

        With ``remove``, the Gaussians are those of these statistics minus
        ``remove`` (formed chunk by chunk, never for all positions at once).
        Uses a Cholesky factor and a triangular solve (no explicit inverse);
        meant for small B (calibration images).
        """
        P = self.shape[0]
        out = torch.empty(P, emb.shape[-1], dtype=torch.float64, device=emb.device)
        with _one_thread(emb.device):
            for a in range(0, P, _CHUNK):
                b = min(a + _CHUNK, P)
                part = self.slice(a, b)
                if remove is not None:
                    part = part.copy().combine(remove.slice(a, b), sign=-1)
                L = part._cholesky(part._covariance_chunk(0, b - a, epsilon), epsilon)
                diff = emb[a:b].double() - part.mean()[:, :, None]
                z = torch.linalg.solve_triangular(L, diff, upper=False)
                out[a:b] = z.square().sum(1)
        return out.sqrt_()


def mahalanobis(emb, mean, precision):
    """Distances (B, P) of ``emb`` (P, d, B) to Gaussians (mean (P, d), precision (P, d, d)).

    ``emb`` is overwritten (it becomes ``emb - mean``).
    """
    diff = emb.sub_(mean[..., None])
    t = torch.bmm(precision, diff)
    d2 = t.mul_(diff).sum(1)
    return d2.clamp_(min=0).sqrt_().T
