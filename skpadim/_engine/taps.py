"""Layer taps: run a backbone and collect the outputs of named layers.

:class:`LayerTaps` runs a backbone and returns the outputs of named
submodules, stopping the forward pass as soon as the last of them is computed
(the layers after it are never run). Its hooks stay registered on the module
and write into storage private to the calling thread, so one module serves
several threads at once. :func:`truncate` removes the modules that never run
before the last tapped layer (their weights would be unused, and random for
a torchvision model rebuilt from a file). :func:`probe_shapes` gives each
tapped layer's feature-map shape for one image size; :func:`auto_layers`
picks PaDiM's three scales in a backbone that has no preset.
"""

import contextlib
import difflib
import functools
import threading
import uuid
import weakref

import numpy as np
import torch
from torch import nn


class _StopForward(Exception):
    """Raised inside a hook once every requested layer has been computed."""


# Per thread: the outputs being collected by each LayerTaps call in progress.
_ACTIVE = threading.local()
# The LayerTaps alive in this process, by token (hooks of dead ones are removed).
_LIVE = weakref.WeakValueDictionary()


def _record(token, name, wanted, module, args, output):
    """Forward hook (a module-level function, so that the module stays picklable)."""
    out = getattr(_ACTIVE, "calls", {}).get(token)
    if out is None:  # the module is run outside a LayerTaps call
        return
    out[name] = output
    if len(out) == wanted:
        raise _StopForward


def _layer_error(layers, names, missing):
    close = difflib.get_close_matches(missing, names, n=3)
    did = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"The 'layers' parameter names {missing!r}, which is not a submodule of the "
        f"backbone (layers={list(layers)!r}).{did} Valid names are listed by "
        "[name for name, _ in backbone.named_modules()]."
    )


def remove_tap_hooks(model, stale_only=True):
    """Drop the hooks of LayerTaps that no longer exist (or came with an unpickled module);
    with ``stale_only=False``, every LayerTaps hook (those a deep copy brought along)."""
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if (isinstance(hook, functools.partial) and hook.func is _record
                    and not (stale_only and hook.args[0] in _LIVE)):
                del module._forward_hooks[key]


class LayerTaps:
    """Call ``model`` and collect the outputs of the modules named ``layers``.

    Thread-safe: concurrent calls from several threads each get their own
    outputs (the hooks look up the calling thread's collection).
    """

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
        self._token = uuid.uuid4().hex  # unique across processes (hooks can be pickled)
        remove_tap_hooks(model)
        _LIVE[self._token] = self
        for name in self.layers:
            modules[name].register_forward_hook(
                functools.partial(_record, self._token, name, len(self.layers))
            )

    def __call__(self, x):
        calls = getattr(_ACTIVE, "calls", None)
        if calls is None:
            calls = _ACTIVE.calls = {}
        out = calls[self._token] = {}
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            del calls[self._token]
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


class Removed(nn.Module):
    """Stands in for a module that PaDiM never runs (it follows the last tapped layer)."""

    def __init__(self, name="", last_layer=""):
        super().__init__()
        self.name = name
        self.last_layer = last_layer

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            f"The module {self.name!r} of this backbone was removed: the detector keeps only "
            f"the modules that run up to its last tapped layer {self.last_layer!r}. Tap its "
            "layers with forward hooks, or build the full model again to run it."
        )

    def extra_repr(self):
        return f"{self.name!r}"


@contextlib.contextmanager
def modules_run(model):
    """Record, into the yielded set, the names of ``model``'s modules that run."""
    ran = set()
    names = {id(m): n for n, m in model.named_modules()}
    handles = [
        m.register_forward_pre_hook(lambda mod, args: ran.add(names[id(mod)]))
        for m in model.modules()
    ]
    try:
        yield ran
    finally:
        for h in handles:
            h.remove()


def unused_modules(model, ran):
    """Names of the outermost modules of ``model`` of which no part is in ``ran``.

    A container that is only iterated (a ModuleList) never runs itself; it is
    used when one of its submodules runs.
    """
    used = {""}
    for name in ran:
        parts = name.split(".")
        used.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    out = []
    for name, _ in model.named_modules():
        if name and name not in used and name.rpartition(".")[0] in used:
            out.append(name)
    return out


def truncate(model, names, last_layer):
    """Replace the modules ``names`` of ``model`` by :class:`Removed` (in place).

    Names that ``model`` does not have are skipped: what follows the last
    tapped layer does not matter.
    """
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            continue
        parent, _, child = name.rpartition(".")
        modules[parent]._modules[child] = Removed(name, last_layer)
    return model


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
