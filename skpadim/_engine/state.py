"""The fitted state of a PadimDetector: everything fit produces, in one object.

A :class:`FittedState` holds

* the embedding: the backbone (truncated after its last tapped layer), the
  layers and their shapes, the kept channels, the image size and the
  normalization, as a JSON ``spec`` plus the ``feature_index`` array; the
  :class:`~.layout.Layout` they define and the :class:`~.embedder.Embedder`
  that runs the backbone;
* what accumulates over the images: the running statistics, the
  calibration sample and the random generator that draws its keys;
* what is derived from them at the end of each fit call (:mod:`.finish`,
  the one end of every fit, which sets them with :meth:`set_fitted`):
  ``epsilon``, ``sigma``, ``image_score``, ``shift_tolerance`` and
  ``covariance`` in use, the means and precisions, the held-out calibration
  scores and the offset.

:meth:`fitted_params` is what the rest of skpadim reads of it (through
``PadimDetector.fitted_params_``).

It is never modified once a detector holds it, except for ``offset`` (a
threshold the user may set): a fit call builds a new state next to it and
the detector swaps the reference when the call succeeds, so a prediction
that started earlier finishes with the old one. :meth:`to_arrays` and
:meth:`from_arrays` are the only way in and out of files, pickles and copies.
Two states fitted on different images with independent generators merge
exactly (:meth:`merged`).
"""

import copy
import json

import numpy as np
import torch

from .calibration import CAPACITY, CalibrationSample, flagged_fraction, n_held_out, offset_for
from .embedder import Embedder
from .layout import Layout
from .gaussian import GaussianStats
from .persist import backbone_weights, load_device, model_weights, pack, rebuild_backbone, unpack
from .tiles import tiling_of_spec

_SPEC_KEYS = {"backbone", "layers", "shapes", "removed", "image_size", "normalize", "n_channels",
              "device", "params"}
# Embedding keys that files written before them lack (neighbourhood: 1), or only some
# models have (tiles).
_SPEC_OPTIONAL = {"neighbourhood", "tiles"}
_FITTED_KEYS = {"epsilon", "sigma", "contamination", "offset"}
# Fitted values that files written before they existed lack, with the value they mean.
_FITTED_OPTIONAL = {"image_score": "max", "shift_tolerance": 0, "covariance": "sample", "pixel_threshold": None}


class InconsistentState(ValueError):
    """Arrays and metadata that do not describe a valid fitted state."""

    def __init__(self, source, detail):
        super().__init__(f"{source} has inconsistent contents: {detail}.")
        self.detail = detail


def stats_device(device):
    """Where the running sums live: MPS has no float64, so the CPU there."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


class FittedState:
    """See the module docstring. Build one with :meth:`empty` or :meth:`from_arrays`."""

    def __init__(self, spec, feature_index, embedder, stats, sample, rng):
        self.spec = spec
        self.feature_index = feature_index
        self.embedder = embedder
        self.layout = embedder.layout
        self.stats = stats  # GaussianStats, or None before any image
        self.sample = sample
        self.rng = rng
        self.epsilon = self.sigma = self.contamination = self.offset = None
        self.pixel_threshold = None
        self.covariance = "sample"
        self.image_score = "max"
        self.shift_tolerance = 0
        self.mean = self.precision = self.calibration = None
        self.device_mean = self.device_precision = None

    @classmethod
    def empty(cls, spec, feature_index, model, device, rng, taps=None):
        embedder = Embedder(model, spec, Layout(spec, feature_index, device), device, taps)
        return cls(spec, feature_index, embedder, None, CalibrationSample(), rng)

    # ------------------------------------------------------------ properties

    @property
    def device(self):
        return self.embedder.device

    @property
    def n(self):
        """Images fitted (with shared tiles, the statistics count every tile)."""
        return 0 if self.stats is None else self.stats.n // self.layout.samples_per_image

    @property
    def grid(self):
        return self.layout.grid

    @property
    def shape(self):
        """(positions, features)."""
        return self.layout.n_positions, len(self.feature_index)

    @property
    def fitted(self):
        return self.precision is not None

    def nbytes(self):
        """Bytes of the statistics and precisions held."""
        P, d = self.shape
        return 4 * P * d * d * ((self.stats is not None) + self.fitted)

    def fitted_params(self):
        """The parameters as this state fixed them, resolved (JSON-representable, a new dict):
        what the command line, export and the cluster read of a fitted detector."""
        spec, params = self.spec, self.spec["params"]
        tiles = spec.get("tiles")
        out = {
            "backbone": spec["backbone"],
            "weights": params.get("weights"),
            "layers": list(spec["layers"]),
            "layer_shapes": [list(s) for s in spec["shapes"]],
            "n_features": len(self.feature_index),
            "feature_map_shape": list(self.grid),
            "image_size": list(spec["image_size"]),
            "native_size": self.layout.native,
            "normalize": copy.deepcopy(spec["normalize"]),
            "n_channels": spec["n_channels"],
            "tiles": None if tiles is None else copy.deepcopy(tiles),
            "n_tiles": self.layout.n_tiles,
            "neighbourhood": int(spec.get("neighbourhood", 1)),
            "backbone_dtype": params.get("backbone_dtype", "float32"),
        }
        if self.fitted:
            out.update(epsilon=self.epsilon, sigma=self.sigma, contamination=self.contamination,
                       image_score=self.image_score, shift_tolerance=self.shift_tolerance,
                       covariance=self.covariance)
        return out

    # -------------------------------------------------------------- fitting

    def new_stats(self):
        return GaussianStats.empty(*self.shape, stats_device(self.device))

    def replaced(self, stats, sample, rng):
        """A new state with this one's embedding and the given accumulated data."""
        return FittedState(self.spec, self.feature_index, self.embedder, stats, sample, rng)

    def merged(self, other):
        """The state of both states' images (``other``'s after this one's), not finalized.

        Their generators must be independent (for partitions of one data set,
        e.g. ``np.random.default_rng(seed).spawn(n)``); the result keeps this
        state's generator.
        """
        if self.spec != other.spec or not np.array_equal(self.feature_index, other.feature_index):
            raise ValueError("Cannot merge fitted states with different embeddings.")
        stats = self.new_stats()
        for s in (self.stats, other.stats):
            if s is not None:
                stats.combine(s)
        sample = self.sample.merged(other.sample, id_offset=self.n)
        return self.replaced(stats, sample, copy.deepcopy(self.rng))

    def set_fitted(self, options, mean, precision, calibration, offset, pixel_threshold, host_precision=None):
        """What the end of a fit (:func:`~.finish.finish`) derived, with the options it used:
        ``mean`` (P, d) and ``precision`` (P, d, d) tensors, the calibration scores (k,),
        the offset they give for ``options.contamination``, the label-free pixel threshold;
        ``host_precision``: ``precision``'s values in a numpy array already (None: copied
        here). The device copy predictions use is ``precision`` itself where it is on the
        device."""
        self.epsilon, self.sigma = options.epsilon, options.sigma
        self.image_score, self.shift_tolerance = options.image_score, options.shift_tolerance
        self.covariance = options.covariance
        self.mean = mean.cpu().numpy()
        self.precision = precision.cpu().numpy() if host_precision is None else host_precision
        self.calibration = calibration
        self._to_device(precision)
        self.offset, self.contamination = float(offset), options.contamination
        self.pixel_threshold = float(pixel_threshold)

    def _to_device(self, precision):
        device = self.device
        self.device_mean = torch.from_numpy(self.mean).float().to(device)
        self.device_precision = precision.to(device)

    def offset_for(self, contamination):
        return offset_for(self.calibration, contamination)

    def recalibrate(self, contamination):
        """Set the offset for another contamination (the calibration scores stay)."""
        self.offset = self.offset_for(contamination)
        self.contamination = contamination if isinstance(contamination, str) else float(contamination)

    def flagged_fraction(self, offset):
        return flagged_fraction(self.calibration, offset)

    # ---------------------------------------------------------- persistence

    def _tile_dims(self):
        return () if self.layout.tiling is None else (self.layout.n_tiles,)

    def to_arrays(self):
        """``(arrays, meta)``: numeric numpy arrays and a JSON-representable dict."""
        P, d = self.shape
        stats = self.stats if self.stats is not None else self.new_stats()
        arrays = {
            "feature_index": np.asarray(self.feature_index),
            "stats.shift": stats.shift.cpu().numpy(),
            "stats.total": stats.total.cpu().numpy(),
            "stats.outer_upper": pack(stats.outer),
            "sample.keys": self.sample.keys,
            "sample.ids": self.sample.ids,
        }
        kept = self.layout.patches.kept_shapes
        layers = [i for i, (c, _, _) in enumerate(kept) if c]
        for j, i in enumerate(layers):
            arrays[f"sample.layer{i}"] = (
                torch.stack([item[j] for item in self.sample.items]).cpu().numpy()
                if len(self.sample) else np.zeros((0, *self._tile_dims(), *kept[i]), np.float32)
            )
        arrays.update(model_weights(self.embedder.model))
        fitted = None
        if self.fitted:
            arrays["precision_upper"] = pack(torch.from_numpy(self.precision))
            arrays["calibration"] = np.asarray(self.calibration, dtype=np.float64)
            fitted = {"epsilon": self.epsilon, "sigma": self.sigma,
                      "contamination": self.contamination, "offset": float(self.offset),
                      "pixel_threshold": float(self.pixel_threshold)}
            if self.image_score != "max":
                fitted["image_score"] = self.image_score
            if self.shift_tolerance:
                fitted["shift_tolerance"] = self.shift_tolerance
            if self.covariance != "sample":
                fitted["covariance"] = self.covariance
        st = self.rng.bit_generator.state
        rng = {"bit_generator": st["bit_generator"], "state": str(st["state"]["state"]),
               "inc": str(st["state"]["inc"]), "has_uint32": int(st["has_uint32"]),
               "uinteger": int(st["uinteger"])}
        meta = {"spec": self.spec, "n": self.n, "rng": rng, "fitted": fitted}
        json.dumps(meta)  # JSON-representable, or fail here rather than in a file
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays, meta, *, device, module=None, source="the pickle"):
        """Inverse of :meth:`to_arrays`. ``module``: an instance of a custom backbone's class.

        Checks that the arrays and metadata agree (names, shapes, dtypes, ranges)
        before building anything, and raises a ValueError naming ``source`` if not.
        """
        _check(arrays, meta, source)
        spec = meta["spec"]
        model = rebuild_backbone(spec, backbone_weights(arrays), module, source)
        index = arrays["feature_index"]
        state = cls.empty(spec, index, model, device, _generator(meta["rng"], source))
        if meta["n"]:
            d = len(index)
            stats = GaussianStats(meta["n"] * state.layout.samples_per_image, torch.from_numpy(arrays["stats.shift"]),
                                  torch.from_numpy(arrays["stats.total"]),
                                  unpack(arrays["stats.outer_upper"], d))
            state.stats = stats.to(stats_device(device))
        layers = sorted(int(k[len("sample.layer"):]) for k in arrays if k.startswith("sample.layer"))
        per_layer = [torch.from_numpy(arrays[f"sample.layer{i}"]).to(device) for i in layers]
        items = [[t[m] for t in per_layer] for m in range(len(arrays["sample.keys"]))]
        state.sample = CalibrationSample(arrays["sample.keys"], arrays["sample.ids"], items)
        fitted = meta["fitted"]
        if fitted is not None:
            state.epsilon, state.sigma = float(fitted["epsilon"]), float(fitted["sigma"])
            state.contamination, state.offset = fitted["contamination"], float(fitted["offset"])
            # Files from before pixel thresholds: the median held-out anomaly score, which is
            # the fitted value when the image score is the map's maximum, until the next fit call.
            state.pixel_threshold = float(fitted.get("pixel_threshold",
                                                     np.median(-np.asarray(arrays["calibration"]))))
            state.image_score = fitted.get("image_score", "max")
            state.shift_tolerance = fitted.get("shift_tolerance", 0)
            state.covariance = fitted.get("covariance", "sample")
            state.mean = state.stats.mean().cpu().numpy()
            precision = unpack(arrays["precision_upper"], len(index))
            state.precision = precision.numpy()
            state.calibration = arrays["calibration"]
            state._to_device(precision)
        return state


def pickled(attributes):
    """A detector's ``__dict__`` for pickling: its fitted state as arrays, no lock."""
    attributes.pop("_fit_lock", None)
    state = attributes.pop("_state", None)
    if state is not None:
        attributes["_fitted"] = state.to_arrays()
    return attributes


def unpickled(attributes):
    """Inverse of :func:`pickled`: ``(attributes, (arrays, meta) or None)``."""
    attributes = dict(attributes)
    return attributes, attributes.pop("_fitted", None)


def load_options(est, meta):
    """``from_arrays`` keywords for an unpickled detector: its device and custom module."""
    module = est.backbone if isinstance(est.backbone, torch.nn.Module) else None
    return {"device": load_device(meta["spec"]["device"], est.device), "module": module}


def _generator(st, source):
    try:
        if st["bit_generator"] != "PCG64" or set(st) != {"bit_generator", "state", "inc", "has_uint32", "uinteger"}:
            raise ValueError
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = {
            "bit_generator": "PCG64", "state": {"state": int(st["state"]), "inc": int(st["inc"])},
            "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"]),
        }
        return rng
    except (ValueError, TypeError, KeyError, OverflowError):
        raise InconsistentState(source, "invalid random generator state") from None


def _check(arrays, meta, source):
    """Shapes and scalars agree with each other (a crafted file must not crash torch)."""

    def need(ok, what):
        if not ok:
            raise InconsistentState(source, what)

    need(isinstance(meta, dict) and set(meta) == {"spec", "n", "rng", "fitted"}, "metadata keys")
    spec, n, fitted = meta["spec"], meta["n"], meta["fitted"]
    need(isinstance(spec, dict) and _SPEC_KEYS <= set(spec) <= _SPEC_KEYS | _SPEC_OPTIONAL, "embedding keys")
    k = spec.get("neighbourhood", 1)
    need(isinstance(k, int) and not isinstance(k, bool) and k >= 1 and k % 2 == 1, "neighbourhood")
    need(isinstance(n, int) and not isinstance(n, bool) and n >= 0, "image count")
    shapes, layers = spec["shapes"], spec["layers"]
    need(isinstance(layers, list) and layers and all(isinstance(x, str) for x in layers)
         and isinstance(shapes, list) and len(shapes) == len(layers)
         and all(isinstance(s, list) and len(s) == 3 and all(isinstance(v, int) and v >= 1 for v in s)
                 for s in shapes), "layers and their shapes")
    need(isinstance(spec["backbone"], str) and isinstance(spec["removed"], list)
         and all(isinstance(x, str) for x in spec["removed"]), "backbone description")
    need(isinstance(spec["image_size"], list) and len(spec["image_size"]) == 2
         and all(isinstance(v, int) and v >= 1 for v in spec["image_size"]), "image size")
    need(isinstance(spec["params"], dict) and isinstance(spec["device"], str)
         and spec["n_channels"] in (None, 1, 3), "fit parameters")
    norm = spec["normalize"]
    need(norm is None or (isinstance(norm, list) and len(norm) == 2
                          and all(isinstance(v, list) and len(v) == 3 for v in norm)), "normalization")
    idx = arrays.get("feature_index")
    need(isinstance(idx, np.ndarray) and idx.ndim == 1 and len(idx) >= 1 and idx.dtype.kind in "iu",
         "feature_index must be a 1-D int array")
    total = sum(c for c, _, _ in shapes)
    need(bool(np.all(np.diff(idx) > 0)) and idx[0] >= 0 and idx[-1] < total,
         "feature_index must be sorted channel indices of the layers")
    h, w = max(((s[1], s[2]) for s in shapes), key=lambda t: t[0] * t[1])
    P, d = h * w, len(idx)
    tiles = tiling_of_spec(spec, need)
    if tiles is not None:
        P = P * tiles.n_tiles // tiles.samples_per_image
    tile_dims = () if tiles is None else (tiles.n_tiles,)
    expected = {"feature_index": (None, None), "stats.shift": ((P, d), np.float32),
                "stats.total": ((P, d), np.float64),
                "stats.outer_upper": ((P, d * (d + 1) // 2), np.float32)}
    keys = arrays.get("sample.keys")
    m = len(keys) if isinstance(keys, np.ndarray) else -1
    need(m >= 0 and keys.ndim == 1 and m <= min(n, CAPACITY), "sample size")
    expected["sample.keys"] = ((m,), np.float64)
    expected["sample.ids"] = ((m,), np.int64)
    start = 0
    for i, (c, lh, lw) in enumerate(shapes):
        kept = int(((idx >= start) & (idx < start + c)).sum())
        start += c
        if kept:
            expected[f"sample.layer{i}"] = ((m, *tile_dims, kept, lh, lw), np.float32)
    if fitted is not None:
        need(isinstance(fitted, dict) and _FITTED_KEYS <= set(fitted) <= _FITTED_KEYS | set(_FITTED_OPTIONAL)
             and n >= 1, "fitted scalars")
        score = fitted.get("image_score", "max")
        need(score == "max" or (isinstance(score, float) and 0 < score < 1), "image_score")
        r = fitted.get("shift_tolerance", 0)
        need(isinstance(r, int) and not isinstance(r, bool) and r >= 0, "shift_tolerance")
        need(fitted.get("covariance", "sample") in ("sample", "oas"), "covariance")
        need(all(isinstance(fitted[k], (int, float)) and np.isfinite(fitted[k])
                 for k in ("epsilon", "sigma", "offset", "pixel_threshold") if k in fitted)
             and fitted["epsilon"] > 0 and fitted["sigma"] >= 0, "epsilon, sigma or offset")
        c = fitted["contamination"]
        need(c == "auto" or (isinstance(c, (int, float)) and 0 < c <= 0.5), "contamination")
        expected["precision_upper"] = ((P, d * (d + 1) // 2), np.float32)
        expected["calibration"] = ((n_held_out(n) if n >= 2 else 1,), np.float64)
    own = {k for k in arrays if not k.startswith("backbone.")}
    need(own == set(expected), f"arrays {sorted(own ^ set(expected))[:3]}")
    for k, (shape, dtype) in expected.items():
        a = arrays[k]
        need(shape is None or (a.shape == shape and a.dtype == dtype), f"array {k!r} has the wrong shape or dtype")
    s = arrays["sample.keys"]
    need(bool(np.all((s >= 0) & (s < 1))) and bool(np.all(np.diff(s) >= 0)), "sample keys")
    ids = arrays["sample.ids"]
    need(bool(np.all((ids >= 0) & (ids < max(n, 1)))), "sample ids")


def check_channels(state, images):
    """Refuse images whose channel count differs from the training images'."""
    fitted = state.spec["n_channels"]
    if fitted is not None and images.n_channels is not None and images.n_channels != fitted:
        kind = {1: "grayscale (1 channel)", 3: "color (3 channels)"}
        raise ValueError(
            f"X holds {kind[images.n_channels]} images, but the detector was fitted on "
            f"{kind[fitted]} images. Convert X to the training images' channel count."
        )

