"""Shift tolerance: which Gaussians a patch meets, and the smallest of its distances to them.

With a ``shift_tolerance`` of r grid steps, the patch at position ``p``
meets the Gaussians of the (2r + 1)^2 positions ``p + step`` inside the
grid. The distances are computed Gaussian by Gaussian (each Gaussian against
the patches of its neighbours, :func:`sources`), one array per step, and
:func:`to_patches` turns them into each patch's smallest value. Used by the
predictions (:mod:`.distances`) and by the held-out calibration at the end
of a fit (:mod:`.gaussian`), whose per-step arrays may come from blocks of
positions computed apart.
"""

import math

import torch


def offsets(radius):
    """The (dy, dx) grid steps of a (2r + 1)^2 window, (0, 0) first."""
    steps = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    return sorted(steps, key=lambda s: s != (0, 0))


def sources(a, b, grid, step, device):
    """For the Gaussians at positions ``a:b``: the position whose patch each one scores
    under ``step`` (the patch at ``q - step`` meets the Gaussian at ``q``), and whether
    that position is inside the grid."""
    H, W = grid
    q = torch.arange(a, b, device=device)
    y, x = q // W - step[0], q % W - step[1]
    inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
    return (y.clamp(0, H - 1) * W + x.clamp(0, W - 1)), inside


def to_patches(per_gaussian, grid, steps):
    """Smallest value per patch (P, B) from ``per_gaussian[k]`` (P, B): the value of the
    Gaussian at ``q`` for the patch at ``q - steps[k]`` (inf where that is outside)."""
    P = per_gaussian[0].shape[0]
    out = torch.full_like(per_gaussian[0], math.inf)
    for step, vals in zip(steps, per_gaussian):
        src, inside = sources(0, P, grid, step, vals.device)
        ours = src[inside]  # distinct positions: a plain gather-min-scatter
        out[ours] = torch.minimum(out[ours], vals[inside])
    return out
