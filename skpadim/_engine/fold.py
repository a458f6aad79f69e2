"""Batch normalization folded into the convolution before it, for inference.

In evaluation mode a ``BatchNorm2d`` is an affine map per channel, so when it
reads nothing but a convolution's output it can be folded into that
convolution's weights and bias: one pass over the feature map fewer, the
same results up to float32 rounding (relative differences of a few 1e-6 on
ResNets). :func:`fold_batchnorm` returns a folded *copy*; the module the
detector exposes and saves keeps its own weights and layers.

The pairs are found on a :mod:`torch.fx` trace of the module. A pair folds
only when the convolution and the normalization are called once each, the
convolution's output feeds the normalization alone, both sit in the same
parent module (so no module's output is the convolution's unfolded output)
and the convolution is not a tapped layer. Subclasses of ``nn.Conv2d`` (the
"same" padding convolutions of EfficientNet ports, say) fold too, once the
folded convolution is checked against the pair on a random input: one whose
forward pass transforms its weights (weight standardization) fails the check
and stays. A module that cannot be traced is left as it is.
"""

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .taps import Removed, remove_tap_hooks


class _Tracer(fx.Tracer):
    """torch.fx's tracer, which does not trace into removed modules."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, (Removed, nn.Conv2d)) or super().is_leaf_module(m, qualname)


def foldable_pairs(model, keep=()):
    """``[(conv name, norm name)]``: the batch normalizations of ``model`` that fold into
    the convolution before them (see the module docstring); ``keep``: names of modules
    whose outputs must stay as they are (the tapped layers)."""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any module fx cannot trace is run as it is
        return []
    modules = dict(model.named_modules())
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        conv, norm = modules.get(src.target), modules[node.target]
        if (
            isinstance(conv, nn.Conv2d)
            and norm.track_running_stats
            and norm.running_mean is not None
            and len(src.users) == 1
            and calls[src.target] == calls[node.target] == 1
            and src.target.rpartition(".")[0] == node.target.rpartition(".")[0]
            and src.target not in keep
        ):
            pairs.append((src.target, node.target))
    return pairs


def _fused(conv, norm):
    """The convolution with ``norm`` folded in, or None when a subclass's forward pass
    does not give ``norm(conv(x))`` with the folded weights (checked on a random input)."""
    fused = fuse_conv_bn_eval(conv, norm).requires_grad_(False)
    if type(conv) is nn.Conv2d:
        return fused
    g = torch.Generator().manual_seed(0)
    w = conv.weight
    size = [max(9, 3 * k) for k in conv.kernel_size]
    x = torch.randn(2, conv.in_channels, *size, generator=g).to(device=w.device, dtype=w.dtype)
    try:
        want, got = norm(conv(x)), fused(x)
    except Exception:  # noqa: BLE001 - a module that only takes its own input size
        return None
    ok = want.shape == got.shape and bool((got - want).abs().max() <= 1e-4 * want.abs().max() + 1e-6)
    return fused if ok else None


def fold_batchnorm(model, keep=(), enabled=True):
    """A copy of ``model`` (in evaluation mode) with its foldable batch normalizations
    folded (none with ``enabled=False``: a plain copy), and the number folded; ``model``
    itself is not changed.

    >>> import torchvision
    >>> net = torchvision.models.resnet18().eval()
    >>> folded, n = fold_batchnorm(net, keep=("layer1", "layer2", "layer3"))
    >>> n, type(folded.bn1).__name__, type(net.bn1).__name__
    (20, 'Identity', 'BatchNorm2d')
    """
    pairs = foldable_pairs(model.eval(), keep) if enabled else []
    out = copy.deepcopy(model).eval()  # a copy of an fx GraphModule comes back in training mode
    remove_tap_hooks(out, stale_only=False)  # the copied hooks would write into model's taps
    modules = dict(out.named_modules())
    n = 0
    with torch.no_grad():
        for conv_name, norm_name in pairs:
            fused = _fused(modules[conv_name], modules[norm_name])
            if fused is None:
                continue
            parent = conv_name.rpartition(".")[0]
            modules[parent]._modules[conv_name.rpartition(".")[2]] = fused
            modules[parent]._modules[norm_name.rpartition(".")[2]] = nn.Identity()
            n += 1
    return out.eval(), n
