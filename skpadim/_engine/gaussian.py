"""One Gaussian per patch position: mergeable sufficient statistics (fit).

The running statistics of each position are the count ``n``, a fixed shift
``c`` (the first batch's mean, rounded to float32), the sum of the shifted
embeddings ``s = sum(x - c)`` (float64) and the sum of their outer products
``S = sum((x - c)(x - c)^T)`` (float32, updated with batched GEMMs). Only the
upper triangle of ``S`` is maintained and read: for large ``d`` the update
computes the blocks on and above the diagonal only. Because ``c`` is close to
the mean, ``S - s s^T / n`` has no catastrophic cancellation; the covariance
and its Cholesky factorization are formed in float64, a few positions at a
time so that the float64 work stays in the CPU caches.

Statistics with different shifts merge exactly (and can be subtracted), so
fits can be split over chunks, processes or machines.
"""

import threading

import torch

from . import lapack
from .parallel import for_chunks
from .shifts import offsets, sources, to_patches
from .transfer import HostSink

# Bytes of float64 matrices per chunk of positions when factorizing: small
# enough to stay in the caches on a CPU (and for the worker threads' malloc
# arenas to reuse their memory instead of mapping it anew), large enough to
# feed a GPU.
_CHUNK_BYTES = {"cpu": 4 << 20}
_CHUNK_BYTES_OTHER = 256 << 20
# Bytes of float32 sums per chunk of positions in the streaming update.
_UPDATE_CHUNK_BYTES = 64 << 20
# Target width of the column blocks of the outer-product update: d is split
# into round(d / _BLOCK) blocks and only those on and above the diagonal are
# computed (d = 550, 64 images, one core: 251 ms per 784 positions against
# 353 ms for the full product).
_BLOCK = 192


def _chunk_size(d, device, itemsize=8, budget=None):
    """Positions per chunk so that one chunk's d x d matrices take ``budget`` bytes."""
    if budget is None:
        budget = _CHUNK_BYTES.get(torch.device(device).type, _CHUNK_BYTES_OTHER)
    return max(1, budget // (itemsize * d * d))


def gemm_chunk(d, device):
    """Positions per chunk for the batched GEMMs: ~64 MB of float32 sums on a CPU, all on a GPU."""
    if torch.device(device).type != "cpu":
        return 1 << 62
    return _chunk_size(d, device, 4, _UPDATE_CHUNK_BYTES)


def _covariance(outer, total, n, epsilon, covariance="sample"):
    """Covariance + epsilon * I from float64 sums, in place of ``outer``.

    ``covariance="sample"``: the unbiased sample covariance (the paper);
    ``"oas"``: the Oracle Approximating Shrinkage estimate (Chen et al. 2010,
    as :class:`sklearn.covariance.OAS`). Only the upper triangle is read and
    meaningful. With a single image the sample covariance is taken as zero, so
    the Gaussian becomes isotropic with variance ``epsilon``.
    """
    if n == 1:
        outer.zero_()
    else:
        outer.baddbmm_(total[:, :, None], total[:, None, :], alpha=-1.0 / n)
        if covariance == "oas":
            _oas_(outer.div_(n), n)
        else:
            outer /= n - 1
    outer.diagonal(dim1=-2, dim2=-1).add_(epsilon)
    return outer


def _oas_(cov, n):
    """Shrink the (P, d, d) maximum-likelihood covariances ``cov`` (upper triangles) of
    ``n`` samples towards ``trace / d * I`` by the OAS coefficient, in place."""
    d = cov.shape[-1]
    diag = cov.diagonal(dim1=-2, dim2=-1)
    mu = diag.sum(-1) / d
    # mean of the squared entries of the symmetric matrix, from its upper triangle
    alpha = (2 * torch.triu(cov, diagonal=1).square().sum((-2, -1)) + diag.square().sum(-1)) / d**2
    den = (n + 1) * (alpha - mu.square() / d)
    rho = torch.where(den > 0, (alpha + mu.square()) / den.where(den > 0, 1.0), 1.0).clamp(max=1.0)
    cov.mul_((1 - rho)[:, None, None])
    diag.add_((rho * mu)[:, None])
    return cov


def _not_positive_definite(epsilon):
    return ValueError(
        "The regularized covariance is not positive definite at some patch "
        f"positions (epsilon={epsilon}); increase epsilon."
    )


class _Failures:
    """Failed Cholesky factorizations of one call: raised at once on a CPU; on another
    device gathered there and read once, by :meth:`check` (a read per chunk would make
    the host wait for each chunk's work)."""

    def __init__(self, device, epsilon):
        self.epsilon = epsilon
        self.at_once = torch.device(device).type == "cpu"
        self.any = None

    def add(self, info):
        """``info`` of ``cholesky_ex`` (positive where a matrix is not positive definite)."""
        bad = info.max() > 0
        if self.at_once:
            if bad:
                raise _not_positive_definite(self.epsilon)
        else:
            self.any = bad if self.any is None else self.any | bad

    def check(self):
        if self.any is not None and bool(self.any):
            raise _not_positive_definite(self.epsilon)


def _cholesky_upper(cov, epsilon, openblas, work, failures=None):
    """Upper Cholesky factor ``U`` (``cov = U^T U``), reading the upper triangle only:
    through :mod:`.lapack` in place (``openblas``; the lower triangle is then left as it
    was, and only the upper one is meaningful), else through torch into ``work``.
    A matrix that is not positive definite raises a ValueError, or is reported to
    ``failures`` (a :class:`_Failures`) when given."""
    if openblas:
        if lapack.cholesky_upper_(cov) > 0:
            raise _not_positive_definite(epsilon)
        return cov
    info = torch.empty(0, dtype=torch.int32, device=work.device)
    U, info = torch.linalg.cholesky_ex(cov, upper=True, out=(work, info))
    if failures is None:
        failures = _Failures("cpu", epsilon)  # at once
    failures.add(info)
    return U


def _mirror_upper_(m):
    """(B, d, d) ``m`` with its lower triangle made the mirror of its upper one, in place.

    A saved model keeps the precision's upper triangle, and predictions on
    the CPU use an exactly symmetric one; torch's CUDA ``cholesky_inverse``
    need not give one, so its result is made so (a loaded model then
    predicts exactly as the one that was saved).
    """
    return m.copy_(torch.triu(m) + torch.triu(m, 1).mT)


class _Scratch:
    """Float64 chunk buffers, one set per worker thread, reused by the chunks of one call.

    A chunk's d x d float64 matrices (4 MB on a CPU) are above glibc's
    default mmap threshold: allocated afresh for every chunk, each can cost
    page faults to map and zero it, and its unmapping a TLB flush on every
    core. Reusing them made the precisions through OpenBLAS 1.14x faster at
    d = 550 (the precision_kernels record of docs/benchmarks.md). The buffers are dropped with
    this object, at the end of the call.
    """

    def __init__(self, d, device):
        self.d, self.device = d, device
        self._local = threading.local()

    def get(self, name, rows):
        bufs = self._local.__dict__.setdefault("bufs", {})
        buf = bufs.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = bufs[name] = torch.empty(rows, self.d, self.d, dtype=torch.float64, device=self.device)
        return buf[:rows]


class GaussianStats:
    """Sufficient statistics of P Gaussians of dimension d (torch tensors)."""

    def __init__(self, n, shift, total, outer):
        self.n = int(n)
        self.shift = shift  # (P, d) float32
        self.total = total  # (P, d) float64
        self.outer = outer  # (P, d, d) float32, upper triangle

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
        P, d = self.shape
        n_blocks = max(1, round(d / _BLOCK))
        edges = [round(i * d / n_blocks) for i in range(n_blocks + 1)]
        blocks = [
            (slice(edges[i], edges[i + 1]), slice(edges[j], edges[j + 1]))
            for i in range(n_blocks)
            for j in range(i, n_blocks)
        ]

        def add(a, b):
            y = emb[a:b].sub_(self.shift[a:b, :, None])
            # A float32 sum within the batch (as for the outer products), float64
            # across batches; summing with dtype=float64 is 13x slower.
            self.total[a:b] += y.sum(-1)
            for rows, cols in blocks:
                # In place on a strided view: BLAS writes straight into the sums.
                self.outer[a:b, rows, cols].baddbmm_(emb[a:b, rows], emb[a:b, cols].mT)

        for_chunks(P, gemm_chunk(d, self.outer.device), self.outer.device, add)
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
        d = self.shape[1]

        def merge(a, b):
            dl, sl = delta[a:b], s[a:b]
            corr = other.outer[a:b].double()
            corr.baddbmm_(dl[:, :, None], sl[:, None, :])
            corr.baddbmm_(sl[:, :, None], dl[:, None, :])
            corr.baddbmm_(dl[:, :, None], dl[:, None, :], alpha=other.n)
            self.outer[a:b] += (sign * corr).to(self.outer.dtype)

        for_chunks(self.shape[0], _chunk_size(d, self.outer.device), self.outer.device, merge)
        self.total += sign * o_total
        self.n += sign * other.n
        return self

    def to(self, device):
        return GaussianStats(
            self.n, self.shift.to(device), self.total.to(device), self.outer.to(device)
        )

    def mean(self):
        """(P, d) float64."""
        return self.shift.double() + self.total / self.n

    def precision(self, epsilon, dtype=torch.float32, covariance="sample", host=None):
        """(P, d, d) inverse of covariance + epsilon * I, via Cholesky, float64 inside
        (``covariance``: see :func:`_covariance`).

        ``host``: a C-contiguous (P, d, d) numpy array of ``dtype`` (statistics on a GPU)
        that receives the result too, each chunk copied out through pinned memory
        while the next one is factorized (:class:`~.transfer.HostSink`).
        """
        P, d = self.shape
        device = self.outer.device
        # Zero-filled here, by torch's own threads: first-touch page faults taken
        # concurrently by the workers cost several times more.
        out = torch.zeros(P, d, d, dtype=dtype, device=device)
        openblas = lapack.enabled(device)
        scratch = _Scratch(d, device)
        failures = _Failures(device, epsilon)
        sink = None if host is None else HostSink(device)

        def invert(a, b):
            cov = scratch.get("cov", b - a).copy_(self.outer[a:b])
            cov = _covariance(cov, self.total[a:b], self.n, epsilon, covariance)
            work = scratch.get("work", b - a)
            U = _cholesky_upper(cov, epsilon, openblas, work, failures)
            if openblas:
                out[a:b] = lapack.cholesky_inverse_(U, work)
            else:
                out[a:b] = torch.cholesky_inverse(U, upper=True, out=cov)
            if device.type != "cpu":
                _mirror_upper_(out[a:b])
            if sink is not None:
                sink.put(host[a:b], out[a:b])

        for_chunks(P, _chunk_size(d, device), device, invert)
        failures.check()
        if sink is not None:
            sink.finish()
        return out

    def squared_distances(self, emb, epsilon, *, held_out=False, radius=0, grid=None, first=0,
                          covariance="sample"):
        """Squared Mahalanobis distances of the patches of ``emb`` under these Gaussians, one
        (P, B) float64 tensor per step of the ``radius`` window (see :mod:`.shifts`).

        These statistics are those of positions ``first:first + P`` of a grid of
        shape ``grid``; ``emb`` (positions, d, B) holds the patches of the whole
        grid when ``radius > 0`` (the neighbours a Gaussian meets), else of these
        positions only (indexed from ``first`` as well, when it covers the grid).
        The k-th tensor holds, for the Gaussian at ``q``, the distance of the patch
        at ``q - steps[k]``. ``held_out=True``: the B images of ``emb`` are among
        those these statistics were accumulated from; they are all left out first
        (a rank-B downdate of the sums, formed a chunk of positions at a time), so
        each is scored by the Gaussians of the *other* images. Uses a Cholesky
        factor and a triangular solve (no explicit inverse); meant for small B
        (calibration images).
        """
        P, d = self.shape
        B = emb.shape[-1]
        n = self.n - B if held_out else self.n
        if n < 1:
            raise ValueError(f"Cannot leave out {B} of {self.n} images.")
        base = first if (radius or len(emb) != P) else 0  # where emb's rows of these Gaussians start
        steps = offsets(radius)
        outs = [torch.empty(P, B, dtype=torch.float64, device=emb.device) for _ in steps]
        openblas = lapack.enabled(emb.device)
        scratch = _Scratch(d, emb.device)
        failures = _Failures(emb.device, epsilon)

        def score(a, b):
            shift = self.shift[a:b, :, None].double()
            y = emb[base + a : base + b].double() - shift  # x - c
            outer, total = scratch.get("cov", b - a).copy_(self.outer[a:b]), self.total[a:b]
            if held_out:
                outer.baddbmm_(y, y.mT, alpha=-1.0)
                total = total - y.sum(-1)
            cov = _covariance(outer, total, n, epsilon, covariance)
            U = _cholesky_upper(cov, epsilon, openblas, scratch.get("work", b - a), failures)
            for step, out in zip(steps, outs):
                if step != (0, 0):  # the patches of the neighbours that this Gaussian meets
                    y = emb[sources(first + a, first + b, grid, step, emb.device)[0]].double() - shift
                y = y - (total / n)[:, :, None]
                if openblas:
                    z = lapack.solve_upper_transposed(U, y)
                else:
                    z = torch.linalg.solve_triangular(U.mT, y, upper=False)
                out[a:b] = z.square().sum(1)

        for_chunks(P, _chunk_size(d, emb.device), emb.device, score)
        failures.check()
        return outs

    def distances_of(self, emb, epsilon, held_out=False, radius=0, grid=None, covariance="sample"):
        """Mahalanobis distances (P, B) of ``emb`` (P, d, B) under these Gaussians: the
        smallest over the ``radius`` window (with the (h, w) ``grid``) of
        :meth:`squared_distances`, square-rooted."""
        outs = self.squared_distances(emb, epsilon, held_out=held_out, radius=radius, grid=grid,
                                      covariance=covariance)
        out = outs[0] if radius == 0 else to_patches(outs, grid, offsets(radius))
        return out.sqrt_()


class BufferedUpdate:
    """Feeds ``stats.update`` at least ``width`` images at a time.

    The outer-product update streams the whole (P, d, d) sums through memory
    once per call, so its cost per image falls as the batch widens (P = 784,
    d = 550 on one core: 6.4 ms per image at 32 images, 3.9 ms at 64). Small
    batches are copied into a fixed (P, d, width) buffer first; memory stays
    constant in the number of images. Call :meth:`flush` at the end.
    """

    WIDTH = 64

    def __init__(self, stats, width=None):
        self.stats = stats
        self.width = width or self.WIDTH
        self.buffer = None
        self.fill = 0

    def add(self, emb):
        """Add (P, d, B) embeddings; ``emb`` may be overwritten."""
        B = emb.shape[-1]
        if self.fill == 0 and B >= self.width:
            self.stats.update(emb)
            return
        if self.buffer is None:
            self.buffer = emb.new_empty(*emb.shape[:2], self.width)
        start = 0
        while start < B:
            take = min(B - start, self.width - self.fill)
            self.buffer[..., self.fill : self.fill + take] = emb[..., start : start + take]
            self.fill += take
            start += take
            if self.fill == self.width:
                self.flush()

    def flush(self):
        if self.fill:
            self.stats.update(self.buffer[..., : self.fill])
            self.fill = 0
