"""A fitted detector's prediction as one traceable torch module.

Two graphs, by what the detector needs:

:class:`PadimGraph` (untiled detectors) computes, from a batch of images
already resized to the detector's ``image_size`` (float32, RGB, in [0, 1]),
exactly what :meth:`PadimDetector.anomaly_map` computes before its final
resize: normalization, the backbone up to the last tapped layer (the
forward pass stops there, as in :class:`~skpadim._engine.taps.LayerTaps`,
so the layers after it are not in the graph), the kept channels of each
layer nearest-upsampled to the finest grid, the Mahalanobis distance of
every patch to its position's Gaussian (with ``shift_tolerance``, the
smallest over the Gaussians around it), the bilinear upsampling to
``image_size``, the Gaussian smoothing with mirror padding, and each image's
score (its maximum, or the mean of its highest values).

:class:`TileGraph` (tiled detectors) stops at the distances: it takes the
tiles of a batch of images, (batch, tiles, 3, th, tw), and returns each
tile's distance grid, (batch, tiles, h, w). With ``tile_sharing="shared"``
the number of tiles is free (every tile meets the same Gaussians), so one
graph serves images of any size; with ``"position"`` it is the detector's.
The runtime cuts the images into tiles and stitches, smooths and scores the
maps as the detector does (:mod:`skpadim._map_rules`).

The precision matrices are an *input* of the traced graph, not a buffer, and
they enter transposed (``precision_t[p] = precision_[p].T``): a row of
patches times ``precision_t`` is ``precision_ @ diff`` term for term, as
the eager ``bmm`` computes it, whether or not the fitted matrices are
exactly symmetric. As an input, they are never a constant inside the
exporter; :mod:`skpadim.export._onnx`
turns that input into an initializer itself (inline, or in the external-data
file when the model passes the size threshold).
"""

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._engine.embedding import neighbourhood_mean
from .._engine.maps import gaussian_kernel
from .._engine.shifts import offsets, sources
from .._engine.taps import LayerTaps
from .._map_rules import pad_mode, top_count


def fitted_facts(det):
    """What the graph needs from a fitted detector: its ``fitted_params_``, checked.

    ValueError for what the graph cannot compute exactly as the detector does:
    a backbone run in reduced precision (the graph runs it in float32).
    """
    if not hasattr(det, "fitted_params_"):
        raise ValueError(
            "The detector is not fitted: export needs a fitted PadimDetector (call fit "
            "first, or load a saved one with PadimDetector.load)."
        )
    facts = det.fitted_params_
    if facts["backbone_dtype"] != "float32":
        raise ValueError(
            f"This detector was fitted with backbone_dtype={facts['backbone_dtype']!r}; the "
            "exported graph runs the backbone in float32, so its maps would differ from the "
            "detector's. Fit with backbone_dtype='float32' to export."
        )
    norm = facts["normalize"]
    facts["image_size"] = tuple(int(v) for v in facts["image_size"])
    facts["norm"] = None if norm is None else (tuple(norm[0]), tuple(norm[1]))
    facts["shapes"] = [tuple(int(v) for v in s) for s in facts["layer_shapes"]]
    return facts


def _nearest_index(n_in, n_out):
    # F.interpolate(mode="nearest")'s index rule, as PatchEmbedding applies it.
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    idx = torch.floor(torch.arange(n_out, dtype=torch.float32) * scale).long()
    return idx.clamp_(max=n_in - 1)


class _Distances(nn.Module):
    """Images -> their patches' squared Mahalanobis distances: the part both graphs share."""

    def __init__(self, det, facts):
        super().__init__()
        model = copy.deepcopy(det.backbone_).cpu().float().eval().requires_grad_(False)
        self.backbone = model
        self._taps = LayerTaps(model, det.layers_)
        norm = facts["norm"]
        self.normalize = norm is not None
        if norm is not None:
            self.register_buffer("norm_mean", torch.tensor(norm[0], dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("norm_std", torch.tensor(norm[1], dtype=torch.float32).view(1, 3, 1, 1))
        H, W = (int(v) for v in det.feature_map_shape_)
        self.grid = (H, W)
        index = np.asarray(det.feature_index_)
        self._plan = []  # per layer: (kept channels or None, rows or None, cols or None)
        start = 0
        for c, h, w in facts["shapes"]:
            local = index[(index >= start) & (index < start + c)] - start
            start += c
            if len(local) == 0:
                self._plan.append(None)
                continue
            keep = None if len(local) == c else torch.as_tensor(local, dtype=torch.long)
            rows = None if h == H else _nearest_index(h, H)
            cols = None if w == W else _nearest_index(w, W)
            self._plan.append((keep, rows, cols))
        self.register_buffer("mean", torch.from_numpy(np.asarray(det.mean_, dtype=np.float32)))
        self.neighbourhood = facts["neighbourhood"]
        # shift_tolerance: per step of the window, for the Gaussian at q the patch at
        # q - step it meets, and for the patch at p the Gaussian p + step (if inside).
        self._shifts = []
        for step in offsets(int(facts.get("shift_tolerance") or 0)):
            if step == (0, 0):
                continue
            src, _ = sources(0, H * W, self.grid, step, "cpu")
            back = (-step[0], -step[1])
            dest, inside = sources(0, H * W, self.grid, back, "cpu")
            self._shifts.append((src, dest, inside))

    def embed(self, images):
        """(N, 3, h, w) in [0, 1] -> (N, d, H, W): normalization, backbone, kept channels."""
        x = images
        if self.normalize:
            x = (x - self.norm_mean) / self.norm_std
        feats = self._taps(x)
        parts = []
        for f, plan in zip(feats, self._plan):
            if plan is None:
                continue
            keep, rows, cols = plan
            if keep is not None:
                f = f.index_select(1, keep)
            f = neighbourhood_mean(f, self.neighbourhood)
            if rows is not None:
                f = f.index_select(2, rows)
            if cols is not None:
                f = f.index_select(3, cols)
            parts.append(f)
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def squared(self, emb, precision_t):
        """Squared distances (positions, N) of patches ``emb`` (positions, N, d) to the
        Gaussians (the smallest over the shift window, if any)."""
        diff = emb - self.mean.unsqueeze(1)
        d2 = (torch.matmul(diff, precision_t) * diff).sum(-1)  # (positions, N)
        for src, dest, inside in self._shifts:
            diff = emb.index_select(0, src) - self.mean.unsqueeze(1)  # the patch each Gaussian meets
            per_gaussian = (torch.matmul(diff, precision_t) * diff).sum(-1)
            per_patch = per_gaussian.index_select(0, dest)
            d2 = torch.minimum(d2, torch.where(inside[:, None], per_patch, torch.full_like(per_patch, math.inf)))
        return d2


class PadimGraph(nn.Module):
    """``forward(images, precision_t) -> (anomaly_maps, image_scores)`` (untiled detectors).

    Parameters
    ----------
    det : PadimDetector
        A fitted detector without tiles; its backbone is copied to the CPU.
    """

    def __init__(self, det):
        super().__init__()
        facts = fitted_facts(det)
        self.image_size = facts["image_size"]
        self.distances = _Distances(det, facts)
        self.sigma = facts["sigma"]
        self.image_score = facts["image_score"]
        if self.sigma > 0:
            self.register_buffer("kernel", gaussian_kernel(self.sigma, torch.device("cpu")))

    def forward(self, images, precision_t):
        emb = self.distances.embed(images)  # (B, d, H, W)
        H, W = self.distances.grid
        d2 = self.distances.squared(emb.flatten(2).permute(2, 0, 1), precision_t)  # (P, B)
        dist = d2.clamp(min=0).sqrt().transpose(0, 1).reshape(-1, 1, H, W)
        if (H, W) != tuple(self.image_size):
            dist = F.interpolate(dist, size=tuple(self.image_size), mode="bilinear", align_corners=False)
        if self.sigma > 0:
            k = self.kernel
            r = k.numel() // 2
            dist = F.pad(dist, (r, r, r, r), mode=pad_mode(r, self.image_size))
            dist = F.conv2d(dist, k.view(1, 1, 1, -1))
            dist = F.conv2d(dist, k.view(1, 1, -1, 1))
        maps = dist[:, 0]
        if self.image_score == "max":
            return maps, maps.amax(dim=(1, 2))
        k = top_count(self.image_score, maps.shape[1] * maps.shape[2])
        return maps, maps.flatten(1).topk(k, dim=1).values.mean(1)


class TileGraph(nn.Module):
    """``forward(tiles, precision_t) -> tile_distances`` (tiled detectors).

    ``tiles`` is (B, T, 3, th, tw), the tiles of B images (T of them each: the
    detector's tile locations with ``tile_sharing="position"``, any number
    with ``"shared"``); the output (B, T, h, w) holds each tile's distance
    grid, as the detector computes it before stitching.

    Parameters
    ----------
    det : PadimDetector
        A fitted detector with tiles; its backbone is copied to the CPU.
    """

    def __init__(self, det):
        super().__init__()
        facts = fitted_facts(det)
        self.tile_size = tuple(facts["tiles"]["size"])
        self.per_location = facts["tiles"]["sharing"] == "position"
        self.n_tiles = int(facts["n_tiles"])
        self.distances = _Distances(det, facts)

    def forward(self, tiles, precision_t):
        B, T = tiles.shape[0], tiles.shape[1]
        th, tw = self.tile_size
        emb = self.distances.embed(tiles.reshape(-1, 3, th, tw))  # (B * T, d, h, w)
        h, w = self.distances.grid
        d = emb.shape[1]
        if self.per_location:  # Gaussian t * P + p: patch p of tile location t
            emb = emb.reshape(B, T, d, h * w).permute(1, 3, 0, 2).reshape(T * h * w, B, d)
            d2 = self.distances.squared(emb, precision_t)  # (T * P, B)
            d2 = d2.reshape(T, h, w, B).permute(3, 0, 1, 2)
        else:  # every tile meets the same P Gaussians
            emb = emb.flatten(2).permute(2, 0, 1)  # (P, B * T, d)
            d2 = self.distances.squared(emb, precision_t)  # (P, B * T)
            d2 = d2.transpose(0, 1).reshape(B, T, h, w)
        return d2.clamp(min=0).sqrt()


def graph_of(det):
    """The graph that computes ``det``'s predictions: a TileGraph for tiled detectors."""
    return TileGraph(det) if det.fitted_params_["tiles"] is not None else PadimGraph(det)
