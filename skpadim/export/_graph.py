"""A fitted detector's whole prediction as one traceable torch module.

:class:`PadimGraph` computes, from a batch of images already resized to the
detector's ``image_size`` (float32, RGB, in [0, 1]), exactly what
:meth:`PadimDetector.anomaly_map` computes before its final resize:
normalization, the backbone up to the last tapped layer (the forward pass
stops there, as in :class:`~skpadim._engine.taps.LayerTaps`, so the layers
after it are not in the graph), the kept channels of each layer
nearest-upsampled to the finest grid, the Mahalanobis distance of every patch
to its position's Gaussian, the bilinear upsampling to ``image_size``, the
Gaussian smoothing with mirror padding, and each image's maximum.

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._engine.embedding import neighbourhood_mean
from .._engine.maps import gaussian_kernel, top_count
from .._engine.taps import LayerTaps


def fitted_facts(det):
    """What the graph needs from a fitted detector: its ``fitted_params_``, checked.

    ValueError for what the graph cannot compute exactly as the detector does.
    """
    if not hasattr(det, "fitted_params_"):
        raise ValueError(
            "The detector is not fitted: export needs a fitted PadimDetector (call fit "
            "first, or load a saved one with PadimDetector.load)."
        )
    facts = det.fitted_params_
    if facts["tiles"] is not None:
        raise ValueError(
            "This detector processes images in tiles (tile_size), which export does not "
            "support yet: the exported graph takes whole images at one image_size. Use the "
            "detector in Python, or fit one without tile_size to export it."
        )
    if facts["backbone_dtype"] != "float32":
        raise ValueError(
            f"This detector was fitted with backbone_dtype={facts['backbone_dtype']!r}; the "
            "exported graph runs the backbone in float32, so its maps would differ from the "
            "detector's. Fit with backbone_dtype='float32' to export."
        )
    if facts["shift_tolerance"]:
        raise ValueError(
            f"This detector was fitted with shift_tolerance={facts['shift_tolerance']}, which "
            "export does not support; fit one with shift_tolerance=0 to export it."
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


class PadimGraph(nn.Module):
    """``forward(images, precision_t) -> (anomaly_maps, image_scores)``.

    Parameters
    ----------
    det : PadimDetector
        A fitted detector; its backbone is copied to the CPU.
    """

    def __init__(self, det):
        super().__init__()
        facts = fitted_facts(det)
        self.image_size = facts["image_size"]
        model = copy.deepcopy(det.backbone_).cpu().float().eval().requires_grad_(False)
        self.backbone = model
        self._taps = LayerTaps(model, det.layers_)
        shapes = facts["shapes"]
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
        for k, (c, h, w) in enumerate(shapes):
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
        self.sigma = facts["sigma"]
        self.image_score = facts["image_score"]
        self.neighbourhood = facts["neighbourhood"]
        if self.sigma > 0:
            self.register_buffer("kernel", gaussian_kernel(self.sigma, torch.device("cpu")))

    def forward(self, images, precision_t):
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
        emb = torch.cat(parts, 1) if len(parts) > 1 else parts[0]  # (B, d, H, W)
        H, W = self.grid
        emb = emb.flatten(2).permute(2, 0, 1)  # (P, B, d)
        diff = emb - self.mean.unsqueeze(1)
        d2 = (torch.matmul(diff, precision_t) * diff).sum(-1)  # (P, B)
        dist = d2.clamp(min=0).sqrt().transpose(0, 1).reshape(-1, 1, H, W)
        if (H, W) != tuple(self.image_size):
            dist = F.interpolate(dist, size=tuple(self.image_size), mode="bilinear", align_corners=False)
        if self.sigma > 0:
            k = self.kernel
            r = k.numel() // 2
            h, w = self.image_size
            mode = "reflect" if r < h and r < w else "replicate"
            dist = F.pad(dist, (r, r, r, r), mode=mode)
            dist = F.conv2d(dist, k.view(1, 1, 1, -1))
            dist = F.conv2d(dist, k.view(1, 1, -1, 1))
        maps = dist[:, 0]
        if self.image_score == "max":
            return maps, maps.amax(dim=(1, 2))
        k = top_count(self.image_score, maps.shape[1] * maps.shape[2])
        return maps, maps.flatten(1).topk(k, dim=1).values.mean(1)
