"""Layer taps and the patch embedding.

:class:`LayerTaps` runs a backbone and returns the outputs of named
submodules, stopping the forward pass as soon as the last of them is computed
(the layers after it are never run). :class:`PatchEmbedding` keeps the
randomly chosen channels of each layer *before* upsampling, and writes them,
nearest-upsampled to the finest layer's grid, straight into one reusable
buffer in the (positions, channels, batch) layout that the Gaussian
arithmetic consumes. Peers upsample and concatenate every channel and only
then select the subset; selection commutes with nearest upsampling, so the
result is the same, without the large intermediate tensors.
"""

import difflib

import numpy as np
import torch


class _StopForward(Exception):
    """Raised inside a hook once every requested layer has been computed."""


def _layer_error(layers, names, missing):
    close = difflib.get_close_matches(missing, names, n=3)
    did = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"The 'layers' parameter names {missing!r}, which is not a submodule of the "
        f"backbone (layers={list(layers)!r}).{did} Valid names are listed by "
        "[name for name, _ in backbone.named_modules()]."
    )


class LayerTaps:
    """Call ``model`` and collect the outputs of the modules named ``layers``."""

    def __init__(self, model, layers):
        modules = dict(model.named_modules())
        names = [n for n in modules if n]
        for layer in layers:
            if layer not in modules or not layer:
                raise _layer_error(layers, names, layer)
        if len(set(layers)) != len(layers):
            raise ValueError(f"The 'layers' parameter has duplicates: {list(layers)!r}.")
        self.model = model
        self.layers = tuple(layers)
        self._modules = [modules[n] for n in layers]

    def __call__(self, x):
        out = {}
        wanted = len(self.layers)

        def make_hook(name):
            def hook(module, args, output):
                out[name] = output
                if len(out) == wanted:
                    raise _StopForward

            return hook

        handles = [m.register_forward_hook(make_hook(n)) for n, m in zip(self.layers, self._modules)]
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.layers if n not in out]
        if missing:
            raise ValueError(
                f"The layers {missing!r} were not run by the backbone's forward pass; "
                "choose modules that the forward pass calls."
            )
        feats = [out[n] for n in self.layers]
        for name, f in zip(self.layers, feats):
            if not torch.is_tensor(f) or f.ndim != 4:
                desc = tuple(f.shape) if torch.is_tensor(f) else type(f).__name__
                raise ValueError(
                    f"Layer {name!r} returns {desc}; PaDiM needs a feature map of shape "
                    "(batch, channels, height, width). Choose convolutional layers."
                )
        return feats


def probe_shapes(taps, image_size, device):
    """Return [(channels, h, w)] of each tapped layer for one image of ``image_size``."""
    x = torch.zeros(1, 3, *image_size, device=device)
    try:
        with torch.inference_mode():
            feats = taps(x)
    except RuntimeError as exc:
        raise ValueError(
            f"The backbone cannot process images of image_size={tuple(image_size)} up to "
            f"layers {list(taps.layers)!r} ({str(exc).splitlines()[0]}). Use a larger "
            "image_size or earlier layers."
        ) from None
    shapes = [tuple(f.shape[1:]) for f in feats]
    for name, (c, h, w) in zip(taps.layers, shapes):
        if h < 1 or w < 1 or c < 1:
            raise ValueError(
                f"image_size={tuple(image_size)} is too small for layer {name!r}: its "
                f"feature map would be {c}x{h}x{w}. Use a larger image_size."
            )
    if any(min(h, w) == 1 for _, h, w in shapes):
        _check_not_collapsed(taps, image_size, device)
    return shapes


def _check_not_collapsed(taps, image_size, device, probe=256):
    """Refuse an image_size smaller than a layer's stride.

    Padding keeps such a layer's map at 1 x 1 however small the image is, so
    it would hold little but padding. The stride is measured at ``probe`` px.
    """
    try:
        with torch.inference_mode():
            feats = taps(torch.zeros(1, 3, probe, probe, device=device))
    except (RuntimeError, ValueError):  # a module that only takes its own size
        return
    strides = {name: (probe / f.shape[-2], probe / f.shape[-1]) for name, f in zip(taps.layers, feats)}
    name = max(strides, key=lambda n: strides[n][0] * strides[n][1])
    stride = strides[name]
    if image_size[0] < 0.99 * stride[0] or image_size[1] < 0.99 * stride[1]:
        need = tuple(int(np.ceil(s)) for s in stride)
        raise ValueError(
            f"image_size={tuple(image_size)} is too small for layer {name!r}, which "
            f"downsamples by {stride[0]:g} x {stride[1]:g}: its feature map collapses "
            f"to 1 x 1 and holds mostly padding. Use an image_size of at least {need} "
            "(224 matches ImageNet training) or earlier layers."
        )


def auto_layers(model, device, image_size=(224, 224)):
    """Pick the last stage ending at strides 4, 8 and 16 (PaDiM's three scales).

    Candidates are the modules at depth one and two of ``model`` (e.g.
    ``layer1`` or ``features.3``); the one that finishes last at a given
    stride wins, which for ResNets gives layer1, layer2 and layer3.
    """
    order = []

    def make_hook(name):
        def hook(module, args, output):
            if torch.is_tensor(output) and output.ndim == 4:
                order.append((name, output.shape[-2]))

        return hook

    handles = [
        m.register_forward_hook(make_hook(n))
        for n, m in model.named_modules()
        if n and n.count(".") <= 1
    ]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, *image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    chosen = {}
    for name, h in order:
        stride = image_size[0] / h
        for s in (4, 8, 16):
            if abs(stride - s) < 0.5:
                chosen[s] = name
    if len(chosen) < 3:
        raise ValueError(
            "Could not find feature maps at strides 4, 8 and 16 in this backbone; "
            "pass the 'layers' parameter explicitly (names from "
            "[name for name, _ in backbone.named_modules()])."
        )
    return tuple(chosen[s] for s in (4, 8, 16))


class PatchEmbedding:
    """Keep channels ``feature_index`` of the concatenated layers, on one grid.

    Parameters
    ----------
    shapes : list of (channels, h, w)
        Per-layer feature map shapes (from :func:`probe_shapes`).
    feature_index : ndarray of int
        Sorted indices into the concatenated channels.
    device : torch.device
    """

    def __init__(self, shapes, feature_index, device):
        self.grid = max(((h, w) for _, h, w in shapes), key=lambda hw: hw[0] * hw[1])
        self.n_features = len(feature_index)
        self._device = device
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
        self._buffer = None

    @property
    def n_positions(self):
        return self.grid[0] * self.grid[1]

    def __call__(self, feats):
        """Return a float32 tensor (positions, n_features, batch), reused across calls."""
        B = feats[0].shape[0]
        H, W = self.grid
        d = self.n_features
        buf = self._buffer
        if buf is None or buf.shape[-1] != B or buf.device != feats[0].device:
            buf = self._buffer = torch.empty(H * W, d, B, device=feats[0].device)
        grid = buf.view(H, W, d, B)
        for f, (idx, off, n, rows, cols) in zip(self._layer_feats(feats), self._plan):
            sel = f if idx is None else f.index_select(1, idx)
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
        compact = PatchEmbedding(self._kept_shapes, np.arange(self.n_features), self._device)
        return compact([torch.stack(layer) for layer in zip(*items)])

    def _layer_feats(self, feats):
        # Layers with no kept channel have no plan entry.
        if len(feats) == len(self._plan):
            return feats
        return [f for f, keep in zip(feats, self._keeps) if keep]


def _nearest_index(n_in, n_out, device):
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    idx = torch.floor(torch.arange(n_out, dtype=torch.float32) * scale).long()
    return idx.clamp_(max=n_in - 1).to(device)


def random_feature_index(n_total, n_features, rng):
    """Sorted random subset of ``n_features`` of ``n_total`` channels."""
    if n_features >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n_features, replace=False))
