"""Mahalanobis distances of patch embeddings to the fitted Gaussians (predict).

With a ``shift_tolerance`` of r grid steps, a patch's distance is the
smallest of its distances to the Gaussians of the (2r + 1)^2 positions
around its own (those inside the grid; :mod:`.shifts`): a part that sits a
little off its registered place is compared with the statistics of where it
landed (:func:`mahalanobis_min`).
"""

import torch

from .gaussian import gemm_chunk
from .parallel import for_chunks
from .shifts import offsets, sources, to_patches


def mahalanobis(emb, mean, precision):
    """Distances (B, P) of ``emb`` (P, d, B) to Gaussians (mean (P, d), precision (P, d, d)).

    ``emb`` is overwritten (it becomes ``emb - mean``).
    """
    P, d, B = emb.shape
    diff = emb.sub_(mean[..., None])
    d2 = torch.empty(P, B, dtype=emb.dtype, device=emb.device)

    def part(a, b):
        t = torch.bmm(precision[a:b], diff[a:b])
        torch.sum(t.mul_(diff[a:b]), 1, out=d2[a:b])

    for_chunks(P, gemm_chunk(d, emb.device), emb.device, part)
    return d2.clamp_(min=0).sqrt_().T


def mahalanobis_min(emb, mean, precision, grid, radius):
    """Distances (B, P): for every patch, the smallest distance to the Gaussians of the
    positions within ``radius`` grid steps of its own. ``emb`` (P, d, B) is not changed."""
    P, d, B = emb.shape
    steps = offsets(radius)
    per_gaussian = [torch.empty(P, B, dtype=emb.dtype, device=emb.device) for _ in steps]

    def part(a, b):  # Gaussians a:b, each against the patches of its neighbours
        for step, out in zip(steps, per_gaussian):
            src, _ = sources(a, b, grid, step, emb.device)
            diff = emb[src] - mean[a:b, :, None]
            t = torch.bmm(precision[a:b], diff)
            torch.sum(t.mul_(diff), 1, out=out[a:b])

    for_chunks(P, gemm_chunk(d, emb.device), emb.device, part)
    return to_patches(per_gaussian, grid, steps).clamp_(min=0).sqrt_().T
