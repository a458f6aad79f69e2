"""Mahalanobis distances of patch embeddings to the fitted Gaussians (predict)."""

import torch

from .gaussian import gemm_chunk
from .parallel import for_chunks


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
