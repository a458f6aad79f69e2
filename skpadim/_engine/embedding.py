"""The patch embedding: kept channels of every layer on one grid of patches.

:class:`PatchEmbedding` keeps the randomly chosen channels of each layer
*before* upsampling, and writes them, nearest-upsampled to the finest
layer's grid, straight into one buffer in the (positions, channels, batch)
layout that the Gaussian arithmetic consumes. The buffer is reused from
batch to batch, one per calling thread, so that several threads can embed
at once. Peers upsample and concatenate
every channel and only then select the subset; selection commutes with
nearest upsampling, so the result is the same, without the large
intermediate tensors. With ``neighbourhood=k > 1`` every kept channel is
first averaged over the k x k positions around each position of its own
layer (:func:`neighbourhood_mean`).
"""

import threading

import numpy as np
import torch
import torch.nn.functional as F


class PatchEmbedding:
    """Keep channels ``feature_index`` of the concatenated layers, on one grid.

    Parameters
    ----------
    shapes : list of (channels, h, w)
        Per-layer feature map shapes (from :func:`probe_shapes`).
    feature_index : ndarray of int
        Sorted indices into the concatenated channels.
    device : torch.device
    neighbourhood : int, default=1
        Odd size of the window each layer's features are averaged over
        before the embedding (1: none).
    """

    def __init__(self, shapes, feature_index, device, neighbourhood=1):
        self.grid = max(((h, w) for _, h, w in shapes), key=lambda hw: hw[0] * hw[1])
        self.n_features = len(feature_index)
        self._device = device
        self.neighbourhood = int(neighbourhood)
        self._plan = []
        self._keeps = []
        self._kept_shapes = []  # (kept channels, h, w) of every layer
        start, offset = 0, 0
        H, W = self.grid
        for c, h, w in shapes:
            local = feature_index[(feature_index >= start) & (feature_index < start + c)] - start
            start += c
            self._keeps.append(len(local) > 0)
            self._kept_shapes.append((len(local), h, w))
            if len(local) == 0:
                continue
            idx = None if len(local) == c else torch.as_tensor(local, device=device)
            if H % h == 0 and W % w == 0:
                rows = cols = None
            else:  # the index rule of F.interpolate(mode="nearest")
                rows = _nearest_index(h, H, device)
                cols = _nearest_index(w, W, device)
            self._plan.append((idx, offset, len(local), rows, cols))
            offset += len(local)
        self._local = threading.local()  # the calling thread's buffer

    @property
    def kept_shapes(self):
        """(kept channels, h, w) of every layer: the shapes of :meth:`kept_channels`' tensors."""
        return list(self._kept_shapes)

    @property
    def n_positions(self):
        return self.grid[0] * self.grid[1]

    def __call__(self, feats):
        """Return a float32 tensor (positions, n_features, batch).

        The tensor is reused by the next call from the same thread.
        """
        B = feats[0].shape[0]
        H, W = self.grid
        d = self.n_features
        buf = getattr(self._local, "buffer", None)
        if buf is None or buf.shape[-1] != B or buf.device != feats[0].device:
            buf = self._local.buffer = torch.empty(H * W, d, B, device=feats[0].device)
        grid = buf.view(H, W, d, B)
        for f, (idx, off, n, rows, cols) in zip(self._layer_feats(feats), self._plan):
            sel = f if idx is None else f.index_select(1, idx)
            sel = neighbourhood_mean(sel, self.neighbourhood)
            src = sel.permute(2, 3, 1, 0)  # (h, w, n, B)
            h, w = src.shape[:2]
            if rows is None:
                sh, sw = H // h, W // w
                dst = grid.view(h, sh, w, sw, d, B)[:, :, :, :, off : off + n]
                dst.copy_(src[:, None, :, None])
            else:
                grid[:, :, off : off + n].copy_(src[rows][:, cols])
        return buf

    def kept_channels(self, feats, j):
        """Image ``j``'s kept channels: one (n, h, w) copy per layer that has any."""
        return [
            f[j].clone() if idx is None else f[j].index_select(0, idx)
            for f, (idx, *_) in zip(self._layer_feats(feats), self._plan)
        ]

    def embed_kept(self, items):
        """(P, n_features, k) embedding of k images given by :meth:`kept_channels`."""
        compact = PatchEmbedding(self._kept_shapes, np.arange(self.n_features), self._device,
                                 self.neighbourhood)
        return compact([torch.stack(layer) for layer in zip(*items)])

    def _layer_feats(self, feats):
        # Layers with no kept channel have no plan entry.
        if len(feats) == len(self._plan):
            return feats
        return [f for f, keep in zip(feats, self._keeps) if keep]


def neighbourhood_mean(feats, k):
    """Mean of (B, C, h, w) features over the k x k window around every position.

    At the borders the mean is over the window's positions inside the map
    (no padding value enters it). ``k=1`` returns ``feats`` itself.
    """
    if k == 1:
        return feats
    return F.avg_pool2d(feats, k, stride=1, padding=k // 2, count_include_pad=False)


def _nearest_index(n_in, n_out, device):
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    idx = torch.floor(torch.arange(n_out, dtype=torch.float32) * scale).long()
    return idx.clamp_(max=n_in - 1).to(device)


def random_feature_index(n_total, n_features, rng):
    """Sorted random subset of ``n_features`` of ``n_total`` channels."""
    if n_features >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n_features, replace=False))
