"""The deployment twin of PadimDetector's prediction methods (numpy, no torch)."""

import json
import numbers
import os

import numpy as np

from .._images import check_images
from .._model_kind import EXPORTED, model_kind
from .._sizes import any_size, one_size_runs, size_problem
from .. import _export_format as fmt
from .. import _regions
from ._engines import OpenVinoEngine, OrtEngine, check_options
from ._maps import TileMaps, image_scores, smooth
from ._resize import resize

_KIND = {1: "grayscale (1 channel)", 3: "color (3 channels)"}


def to_float(arr):
    """(..., H, W[, C]) uint8/float -> float32 (..., 3, H, W) in [0, 1], as PadimDetector."""
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / np.float32(255.0)
    else:
        x = arr.astype(np.float32)
    x = np.moveaxis(x, -1, -3)
    c = x.shape[-3]
    if c == 1:
        x = np.repeat(x, 3, axis=-3)
    elif c == 4:
        x = x[..., :3, :, :]
    return np.ascontiguousarray(x)


def _floats(imgs, size):
    """A batch of :meth:`~skpadim._images.ImageSet.host_batches` as float32 (B, 3, h, w) in
    [0, 1], resized to ``size`` (None: as they are, all of one size)."""
    if isinstance(imgs, np.ndarray):
        x = to_float(imgs)
        return x if size is None else resize(x, size)
    if size is None:
        return np.stack([to_float(im) for im in imgs])
    return np.stack([resize(to_float(im), size) for im in imgs])


def _check_batch_size(batch_size):
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"The 'batch_size' parameter must be a positive int; got {batch_size!r}.")


class _ExportedDetector:
    """Prediction methods shared by the exported formats (see :class:`OnnxDetector`)."""

    def __init__(self, path, config, engine, batch_size, min_region_area):
        _check_batch_size(batch_size)
        self.path = path
        self.config_ = config
        self.batch_size = batch_size
        self.image_size = tuple(int(v) for v in config["image_size"])
        self.n_channels_in_ = config.get("n_channels_in")
        self.offset_ = float(config["offset"])
        # Files exported before pixel thresholds: the image threshold as both levels, no
        # region dropped.
        self.pixel_threshold_ = config.get("pixel_threshold", -self.offset_)
        self._pixel_anchor = _regions.check_pixel_threshold(config.get("pixel_anchor", -self.offset_))
        if min_region_area is None:
            min_region_area = config.get("min_region_area", 0)
        self.min_region_area = _regions.check_min_region_area(min_region_area, type(self).__name__)
        self._engine = engine
        self._facts = self.fitted_params_
        self._tilings = {}

    @property
    def fitted_params_(self):
        """The parameters as the fit fixed them, as ``PadimDetector.fitted_params_`` gives
        them (a new dict at each read); a file exported before they were recorded gives
        what its config says (image size, normalization, layers, sigma, epsilon)."""
        config = self.config_
        fitted = config.get("fitted_params")
        if fitted is not None:
            return json.loads(json.dumps(fitted))
        return {"backbone": config.get("backbone"), "layers": list(config.get("layers", [])),
                "n_features": config.get("n_features"), "image_size": list(self.image_size),
                "native_size": False, "normalize": config.get("normalize"), "tiles": None,
                "n_tiles": 1, "n_channels": self.n_channels_in_, "sigma": config.get("sigma"),
                "epsilon": config.get("epsilon"), "feature_map_shape": config.get("feature_map_shape")}

    @property
    def pixel_threshold_(self):
        """Anomaly-map level above which the pixels of a flagged image are defects; may be set."""
        return self._pixel_threshold

    @pixel_threshold_.setter
    def pixel_threshold_(self, value):
        self._pixel_threshold = _regions.check_pixel_threshold(value)

    @property
    def pixel_anchor_(self):
        """The level the relative part of a mask's level is measured from (fixed by the fit)."""
        return self._pixel_anchor

    def __repr__(self):
        return (f"{type(self).__name__}({self.path!r}, image_size={self.image_size}, "
                f"offset_={self.offset_:.6g}, pixel_threshold_={self.pixel_threshold_:.6g})")

    # ------------------------------------------------------------ batches

    def _batches(self, X):
        """Yield ``(graph input, sizes, tile maps or None)`` batch by batch, in the order of X.

        The images are checked and decoded as ``PadimDetector`` does, resized to
        ``image_size`` (not at the native size: there the images a model cannot
        take are refused, :mod:`skpadim._sizes`), and, for a tiled model, cut
        into tiles (``batch_size`` then counts tiles; a model that takes any
        size cuts each image into its own, a batch holding images of one size).
        """
        _check_batch_size(self.batch_size)
        images = check_images(X)
        fitted = self.n_channels_in_
        if fitted is not None and images.n_channels is not None and images.n_channels != fitted:
            raise ValueError(
                f"X holds {_KIND[images.n_channels]} images, but the detector was fitted on "
                f"{_KIND[fitted]} images. Convert X to the training images' channel count."
            )
        facts = self._facts
        native, tiles = bool(facts.get("native_size")), facts.get("tiles")
        flexible = any_size(facts)
        per_batch = self.batch_size if tiles is None else max(1, self.batch_size // int(facts["n_tiles"]))
        first = 0
        for imgs, sizes in images.host_batches(per_batch):
            if native:
                for i, size in enumerate(sizes, first):
                    problem = size_problem(facts, size)
                    if problem is not None:
                        raise ValueError(f"X[{i}] is {problem}.")
            first += len(sizes)
            if not flexible:
                x = _floats(imgs, self.image_size)
                if tiles is None:
                    yield x, sizes, None
                else:
                    tile_maps = self._tile_maps(self.image_size)
                    yield tile_maps.split(x), sizes, tile_maps
                continue
            for start, stop in one_size_runs(sizes, lambda size: self.batch_size // self._tile_maps(size).n_tiles):
                tile_maps = self._tile_maps(sizes[start])
                yield tile_maps.split(_floats(imgs[start:stop], None)), sizes[start:stop], tile_maps

    def _tile_maps(self, size):
        size = tuple(int(v) for v in size)
        tile_maps = self._tilings.get(size)
        if tile_maps is None:
            if len(self._tilings) > 64:
                self._tilings.clear()
            facts = self._facts
            tile_maps = self._tilings[size] = TileMaps(size, facts["tiles"], facts["feature_map_shape"])
        return tile_maps

    def iter_anomaly_maps(self, X, *, maps=True):
        """Yield ``(score_samples, maps)`` batch by batch, in the order of ``X``.

        ``score_samples`` is an (B,) float64 array (minus each image's anomaly
        score); ``maps`` a list of float32 maps at each image's own size, or
        None when ``maps=False``. For progress bars and streaming over large
        folders.
        """
        facts = self._facts
        for x, sizes, tile_maps in self._batches(X):
            if tile_maps is None:
                amaps, top = self._engine(x)
            else:
                [dist] = self._engine(x)
                amaps = smooth(tile_maps.stitch(dist), float(facts["sigma"]))
                top = image_scores(amaps, facts.get("image_score", "max"))
            scores = -np.asarray(top, dtype=np.float64)
            if not maps:
                yield scores, None
                continue
            same = len(set(sizes)) == 1
            if same and tuple(sizes[0]) == tuple(amaps.shape[1:]):
                out = list(amaps)
            elif same:
                out = list(resize(np.ascontiguousarray(amaps), sizes[0]))
            else:
                out = [resize(m[None], s)[0] for m, s in zip(amaps, sizes)]
            yield scores, out

    # ------------------------------------------------------------ methods

    def anomaly_map(self, X, *, return_scores=False):
        """Per-pixel anomaly maps at each image's own size, as ``PadimDetector.anomaly_map``.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths
        return_scores : bool, default=False
            Also return ``score_samples(X)`` from the same pass.

        Returns
        -------
        maps : ndarray of shape (N, H, W), float32, or a list of (H_i, W_i)
            arrays when the images have different sizes.
        scores : ndarray of shape (N,), float64
            Only with ``return_scores=True``.
        """
        out, scores = [], []
        for s, maps in self.iter_anomaly_maps(X):
            scores.append(s)
            out.extend(maps)
        if len({m.shape for m in out}) == 1:
            out = np.stack(out)
        return (out, np.concatenate(scores)) if return_scores else out

    def score_samples(self, X):
        """Minus the maximum of each image's anomaly map (lower = more abnormal).

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths

        Returns
        -------
        scores : ndarray of shape (N,), float64
        """
        return np.concatenate([s for s, _ in self.iter_anomaly_maps(X, maps=False)])

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for predicted anomalies.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths

        Returns
        -------
        scores : ndarray of shape (N,), float64
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """-1 for anomalous images, +1 for normal ones.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths

        Returns
        -------
        labels : ndarray of shape (N,), int
        """
        return np.where(self.decision_function(X) < 0, -1, 1)

    def anomaly_mask(self, X):
        """Boolean defect masks at each image's own size, as ``PadimDetector.anomaly_mask``.

        Empty for the images :meth:`predict` calls normal; on the images it
        flags, the pixels whose map is above ``pixel_threshold_`` (at least
        the map's maximum), regions smaller than ``min_region_area`` left
        out but for the largest.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths

        Returns
        -------
        masks : ndarray of shape (N, H, W), bool, or a list of (H_i, W_i)
            arrays when the images have different sizes.
        """
        masks = [m for m, _ in self._localize(X)]
        return np.stack(masks) if len({m.shape for m in masks}) == 1 else masks

    def defect_regions(self, X):
        """The defect regions of each image, as ``PadimDetector.defect_regions``.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths

        Returns
        -------
        regions : list of N lists of :class:`skpadim.Region`
            Per image, largest first (``box``, ``area``, ``centroid``,
            ``peak``, ``mean``); none for an image :meth:`predict` calls
            normal, at least one for an image it flags.
        """
        return [r for _, r in self._localize(X)]

    def _localize(self, X):
        settings = _regions.settings_of(self)
        out = []
        for scores, maps in self.iter_anomaly_maps(X):
            out.extend(_regions.localize(m, s, settings) for m, s in zip(maps, scores))
        return out


class OnnxDetector(_ExportedDetector):
    """A detector exported by :func:`skpadim.export.to_onnx`, run without torch.

    The deployment twin of :class:`skpadim.PadimDetector` for prediction:
    the same inputs (arrays, lists of images of any size, image paths), the
    same decoding (:mod:`skpadim._images`) and the same antialiased bilinear
    resize (re-implemented in numpy), the same outputs (maps at each input's
    own size, scores, labels at ``offset_``). Needs numpy, Pillow and
    onnxruntime (``pip install "skpadim[runtime]"``), or OpenVINO.

    The file is checked when the detector is built: a file that is not a
    skpadim export, a newer format version, a truncated or damaged file and a
    missing or mismatched external-data file are refused with a ValueError
    saying what to do.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file (its ``.data`` side file, if any, next to it).
    backend : {"onnxruntime", "openvino"}, default="onnxruntime"
        The inference engine; OpenVINO reads the ONNX file directly.
    batch_size : int, default=32
        Images per run of the graph.
    n_threads : int, default=None
        Threads of the engine (None: the engine's default, all cores).
    inference_precision : {"f32", "bf16", "f16"}, default="f32"
        OpenVINO only: reduced precision where the CPU supports it (faster,
        not exact: measure it on your images, see docs/deploy.md).
    providers : list, default=None
        onnxruntime only: execution providers (default: the CPU).
    min_region_area : int, default=None
        :meth:`defect_regions` and :meth:`anomaly_mask` leave out regions
        smaller than this many pixels (but for the largest of a flagged
        image); None: the exported detector's ``min_region_area``.

    Attributes
    ----------
    offset_ : float
        ``decision_function = score_samples - offset_``; set it to move the
        threshold.
    pixel_threshold_ : float
        The exported detector's pixel threshold (anomaly-map units), the
        floor of the level that cuts a flagged image's map into its defect
        mask; set it to move it (e.g. with
        :func:`skpadim.metrics.calibrate_pixel_threshold`).
    pixel_anchor_ : float
        The level the relative part of a mask's level is measured from, as
        ``PadimDetector.pixel_anchor_`` (read-only).
    image_size : (int, int)
        The size images are resized to before the graph.
    n_channels_in_ : int or None
        1 or 3: the channel count of the training images (array inputs).
    config_ : dict
        Everything the file's metadata records (see docs/deploy.md).
    fitted_params_ : dict
        The parameters as the fit fixed them, as ``PadimDetector.fitted_params_``
        gives them (image size, tiles, normalization, sigma...).

    Examples
    --------
    >>> import os, tempfile
    >>> from skpadim import PadimDetector
    >>> from skpadim.datasets import make_anomaly_images
    >>> from skpadim.export import to_onnx
    >>> from skpadim.runtime import OnnxDetector
    >>> X, y, _ = make_anomaly_images(12, 2, image_size=64, random_state=0)
    >>> det = PadimDetector(weights=None, image_size=64, n_features=20, random_state=0).fit(X[y == 0])
    >>> path = to_onnx(det, os.path.join(tempfile.mkdtemp(), "model.onnx"))
    >>> onnx_det = OnnxDetector(path)
    >>> onnx_det.anomaly_map([X[0], X[1][:40, :50]])[1].shape
    (40, 50)
    >>> bool((onnx_det.predict(X) == det.predict(X)).all())
    True
    """

    def __init__(self, path, *, backend="onnxruntime", batch_size=32, n_threads=None,
                 inference_precision="f32", providers=None, min_region_area=None):
        check_options(backend, n_threads, inference_precision, type(self).__name__)
        path = os.fspath(path)
        config = fmt.read_onnx(path)
        if backend == "onnxruntime":
            engine = OrtEngine(path, n_threads, providers)
        else:
            engine = OpenVinoEngine(path, n_threads, inference_precision)
        self.backend = backend
        super().__init__(path, config, engine, batch_size, min_region_area)


class OpenVinoDetector(_ExportedDetector):
    """A detector exported by :func:`skpadim.export.to_openvino` (an IR folder).

    Same methods and attributes as :class:`OnnxDetector`; needs OpenVINO
    (``pip install "skpadim[openvino]"``).

    Parameters
    ----------
    path : str or os.PathLike
        The folder written by ``to_openvino`` (model.xml, model.bin,
        skpadim.json).
    batch_size, n_threads, inference_precision, min_region_area : see :class:`OnnxDetector`.
    """

    def __init__(self, path, *, batch_size=32, n_threads=None, inference_precision="f32",
                 min_region_area=None):
        check_options("openvino", n_threads, inference_precision, type(self).__name__)
        path = os.fspath(path)
        config = read_ir(path)
        engine = OpenVinoEngine(os.path.join(path, fmt.IR_FILES[0]), n_threads, inference_precision)
        self.backend = "openvino"
        super().__init__(path, config, engine, batch_size, min_region_area)


def read_ir(path):
    """Check an OpenVINO export folder; return its config dict."""
    if not os.path.isdir(path):
        fmt.refuse_saved(path)
        raise fmt.FormatError(f"'{path}' is not a folder; an OpenVINO export is a folder with model.xml, model.bin and skpadim.json.")
    meta_path = os.path.join(path, fmt.IR_CONFIG)
    if not os.path.isfile(meta_path):
        raise fmt.FormatError(
            f"'{path}' has no {fmt.IR_CONFIG}: it is not an OpenVINO export of skpadim "
            "(write one with skpadim.export.to_openvino or skpadim export MODEL --format openvino)."
        )
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fmt.FormatError(f"'{meta_path}' is damaged ({exc}).") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt.IR_FORMAT:
        raise fmt.FormatError(f"'{meta_path}' does not describe a skpadim OpenVINO export.")
    config = fmt.check_header(path, {
        "skpadim.format": fmt.FORMAT, "skpadim.format_version": str(meta.get("format_version")),
        "skpadim.config": json.dumps(meta.get("config")),
    })
    for name in fmt.IR_FILES:
        full = os.path.join(path, name)
        spec = meta.get("files", {}).get(name, {})
        if not os.path.isfile(full):
            raise fmt.FormatError(f"'{path}' has no {name}; copy the whole folder.")
        if os.path.getsize(full) != spec.get("size") or fmt.sha256_file(full) != spec.get("sha256"):
            raise fmt.FormatError(
                f"'{full}' does not match the size and SHA-256 recorded in {fmt.IR_CONFIG} "
                "(truncated, damaged or from another export); copy or export it again."
            )
    return config


def load(path, **kwargs):
    """Open an exported detector: an ``.onnx`` file or an OpenVINO folder.

    Parameters
    ----------
    path : str or os.PathLike
    **kwargs
        Passed to :class:`OnnxDetector` or :class:`OpenVinoDetector`.

    Returns
    -------
    detector : OnnxDetector or OpenVinoDetector
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return OpenVinoDetector(path, **kwargs)
    return OnnxDetector(path, **kwargs)


def is_exported(path):
    """Whether ``path`` holds an export (an ONNX file or an OpenVINO folder) rather than a file of
    ``PadimDetector.save``, by its first bytes (or, for a folder, its files).

    For the command line, which reads both kinds.
    """
    return model_kind(path) in EXPORTED
