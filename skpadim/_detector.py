"""PadimDetector: PaDiM (Defard et al. 2020) as a scikit-learn outlier detector."""

import threading
from types import SimpleNamespace

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from ._engine import fitting, inference
from ._engine import params as _params
from ._engine.images import check_images
from ._engine.state import FittedState, check_channels
from ._labels import anomaly_labels

_lock_guard = threading.Lock()


def _state_of(est, name="this attribute"):
    state = est.__dict__.get("_state")
    if state is None:
        raise AttributeError(f"This PadimDetector is not fitted yet: {name} is set by fit.")
    return state


def _fitted(name, read, doc):
    return property(lambda self: read(_state_of(self, name)), doc=doc)


def _fitted_state(est):
    """The detector's fitted state, read once (NotFittedError if there is none)."""
    state = est.__dict__.get("_state")
    if state is None:
        check_is_fitted(est)  # raises NotFittedError
    return state


class PadimDetector(OutlierMixin, BaseEstimator):
    """PaDiM anomaly detection and localization.

    A pretrained CNN turns every image into a grid of patch embeddings (a
    random subset of the channels of several layers, upsampled to the finest
    grid). One multivariate Gaussian per grid position is fitted to the
    embeddings of normal images; the Mahalanobis distance of a new patch to
    its position's Gaussian is its anomaly score. Fitting streams over the
    images and keeps only running sums, so memory does not grow with the
    number of training images.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="resnet18"
        A torchvision classification model name or any module whose forward
        pass takes a (B, 3, H, W) image batch (copied at fit, never modified).
    layers : list of str, default=None
        Names of the modules whose outputs form the embedding. ``None``: the
        paper's ``layer1``-``layer3`` for ResNets, else the last stage at
        strides 4, 8 and 16. Required for a custom module.
    weights : str, WeightsEnum, path or None, default="DEFAULT"
        torchvision weights (``"DEFAULT"``, a member or its name), ``None``
        for random initialization, or a state_dict file (read with
        ``weights_only=True``). For a custom module, ``"DEFAULT"`` or
        ``None`` use it as given.
    n_features : int, default=None
        Channels kept at random. ``None``: the paper's numbers (resnet18: 100,
        wide_resnet50_2: 550), all channels for other backbones.
    image_size : int or (int, int), default=224
        Size every image is resized to (bilinear, antialiased).
    epsilon : float, default=0.01
        Covariance regularization: unbiased sample covariance + epsilon * I.
    sigma : float, default=4.0
        Std, in pixels of ``image_size``, of the maps' Gaussian smoothing; 0
        disables it.
    contamination : 'auto' or float in (0, 0.5], default='auto'
        Sets ``offset_``. A float is the fraction of *new normal* images
        that ``predict`` is expected to flag; ``'auto'`` is Tukey's far-out
        fence, Q3 + 3 * IQR of the held-out anomaly scores (see Notes).
    normalize : 'imagenet', None or (mean, std), default='imagenet'
        Per-channel normalization of images in [0, 1] before the backbone.
    batch_size : int, default=32
        Images per forward pass.
    device : str or torch.device, default="auto"
        ``"auto"`` picks cuda, then mps, then cpu.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset, the calibration sample and, with
        ``weights=None``, the backbone's initialization.
    verbose : bool, default=False
        Show progress bars.

    Attributes
    ----------
    mean_ : ndarray of shape (P, d), float64
        Mean embedding per patch position (row-major grid of P = h * w).
    precision_ : ndarray of shape (P, d, d), float32
        Inverse of covariance + epsilon * I per position.
    feature_index_ : ndarray of shape (d,)
        Sorted indices of the kept channels in the concatenated layers.
    feature_map_shape_ : tuple (h, w)
        Patch grid size.
    layers_ : tuple of str
        The layers used.
    layer_shapes_ : tuple of (channels, height, width)
        Each layer's feature map at ``image_size``.
    backbone_ : torch.nn.Module
        The backbone up to the last layer of ``layers_``; the modules after
        it are removed.
    n_samples_seen_ : int
        Number of normal images fitted.
    n_channels_in_ : int or None
        1 or 3: the channel count of the training images.
    calibration_scores_ : ndarray of shape (k,), float64
        ``score_samples`` of the held-out calibration images (see Notes).
    offset_ : float
        ``decision_function = score_samples - offset_``; may be set.
    device_ : torch.device
        Where the computation runs.

    See Also
    --------
    skpadim.metrics : AUROC, AUPRO, F1, and calibrate_threshold.

    Notes
    -----
    Calibration: each training image gets a random key; the ``k = min(64,
    n // 5)`` images with the smallest keys (a uniform random sample, the
    same for one ``fit`` as for ``partial_fit`` calls) are scored by the
    Gaussians of all *other* images, out of sample, without a second pass
    over the backbone. With ``contamination=c``, ``offset_`` is their
    quantile at rank ``c * (k + 1)``: a new normal image is then flagged
    with probability ``c`` (down to ``1 / (k + 1)``; below that a warning
    says so). :meth:`offset_for` and :meth:`recalibrate` move the
    threshold without refitting.

    Threads: ``score_samples``, ``decision_function``, ``predict`` and
    ``anomaly_map`` may run concurrently from any number of threads, also
    while another thread runs ``partial_fit`` (they use the state they
    started with). Two fit calls at once raise a RuntimeError. See
    docs/safety.md.

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
        batch_size=32,
        device="auto",
        random_state=None,
        verbose=False,
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags

    def __sklearn_is_fitted__(self):
        return self.__dict__.get("_state") is not None

    mean_ = _fitted("mean_", lambda s: s.mean, "Mean embedding per patch position.")
    precision_ = _fitted("precision_", lambda s: s.precision, "Precision matrix per position.")
    feature_index_ = _fitted("feature_index_", lambda s: s.feature_index, "Kept channels.")
    feature_map_shape_ = _fitted("feature_map_shape_", lambda s: tuple(s.grid), "Patch grid (h, w).")
    layers_ = _fitted("layers_", lambda s: tuple(s.spec["layers"]), "The layers used.")
    layer_shapes_ = _fitted("layer_shapes_", lambda s: tuple(tuple(x) for x in s.spec["shapes"]),
                            "(channels, height, width) of each layer's feature map.")
    backbone_ = _fitted("backbone_", lambda s: s.embedder.model, "The truncated backbone.")
    n_samples_seen_ = _fitted("n_samples_seen_", lambda s: s.n, "Number of images fitted.")
    n_channels_in_ = _fitted("n_channels_in_", lambda s: s.spec["n_channels"], "1 or 3 (or None).")
    calibration_scores_ = _fitted("calibration_scores_", lambda s: s.calibration.copy(),
                                  "score_samples of the held-out calibration images.")
    device_ = _fitted("device_", lambda s: s.embedder.device, "Where the computation runs.")

    @property
    def offset_(self):
        """``decision_function = score_samples - offset_``; set it to move the threshold."""
        return _state_of(self, "offset_").offset

    @offset_.setter
    def offset_(self, value):
        state = _fitted_state(self)
        if isinstance(value, bool) or not (np.isscalar(value) and np.isreal(value) and np.isfinite(value)):
            raise ValueError(f"offset_ must be a finite float, got {value!r}.")
        state.offset = float(value)

    # ------------------------------------------------------------------ fit

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

        Parameters that define the embedding (backbone, layers, weights,
        n_features, image_size, normalize) must not change between calls.
        If the call fails or is interrupted, the detector keeps its previous
        state (a failing first call leaves it unfitted).

        Parameters
        ----------
        X, y : see :meth:`fit`.

        Returns
        -------
        self : PadimDetector
        """
        return self._fit(X, y, reset=False)

    def fit_predict(self, X, y=None):
        """``fit(X, y)`` then ``predict(X)``: labels of every image of X, -1 or +1.

        As in :meth:`fit`, only the normal images of ``y`` are fitted.
        """
        return self.fit(X, y).predict(X)

    def _fit(self, X, y, reset):
        lock = self.__dict__.get("_fit_lock")
        if lock is None:
            with _lock_guard:
                lock = self.__dict__.setdefault("_fit_lock", threading.Lock())
        if not lock.acquire(blocking=False):
            raise RuntimeError(
                "fit or partial_fit is already running on this PadimDetector in another "
                "thread; calls that add images must run one at a time (predictions may run "
                "alongside them)."
            )
        try:
            # One snapshot of the parameters: a set_params from another thread
            # during the call does not change it half-way. Invalid: nothing changes.
            params = SimpleNamespace(**_params.validated(self))
            if reset:
                self.__dict__.pop("_state", None)
            state = self.__dict__.get("_state")
            if state is not None:
                fitting.check_frozen(state, params)
            images = check_images(X)
            if y is not None:
                images = _normal_only(images, y)
            if state is None:
                state = fitting.start(params, images)
            else:
                check_channels(state, images)
            self._state = fitting.extend(state, images, params)
        finally:
            lock.release()
        return self

    # -------------------------------------------------------------- predict

    def anomaly_map(self, X, *, return_scores=False):
        """Per-pixel anomaly maps (higher = more anomalous).

        Mahalanobis distance of every patch, upsampled bilinearly to
        ``image_size``, smoothed with a Gaussian of std ``sigma``, then
        resized bilinearly to each input image's own size.

        Parameters
        ----------
        X : array of shape (N, H, W[, C]), list of images or list of paths
        return_scores : bool, default=False
            Also return ``score_samples(X)`` from the same pass (taken before
            the resize to each image's own size, as :meth:`score_samples`).

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
        """Minus the maximum of each image's anomaly map (lower = more abnormal).

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

    def _predict_input(self, X):
        self._validate_params()
        state = _fitted_state(self)  # read once: a fit call replaces it, never changes it
        images = check_images(X)
        check_channels(state, images)
        return state, images

    # ------------------------------------------------------------ threshold

    def offset_for(self, contamination):
        """The ``offset_`` that ``contamination`` gives, from the calibration scores.

        Nothing is refitted or changed; see :meth:`recalibrate` to apply it.

        Parameters
        ----------
        contamination : 'auto' or float in (0, 0.5]
            As the constructor parameter.

        Returns
        -------
        offset : float
        """
        state = _fitted_state(self)
        _params.check_contamination(contamination, "PadimDetector.offset_for")
        return state.offset_for(contamination)

    def flagged_fraction(self, offset=None):
        """Fraction of the held-out calibration images that ``offset`` flags.

        An estimate of the fraction of new normal images that ``predict``
        flags with this offset (``offset_`` by default).

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
        """Set ``contamination`` and ``offset_`` from the calibration scores, without refitting.

        The result is what ``fit`` with this contamination gives.

        Parameters
        ----------
        contamination : 'auto' or float in (0, 0.5]

        Returns
        -------
        self : PadimDetector
        """
        state = _fitted_state(self)
        _params.check_contamination(contamination, "PadimDetector.recalibrate")
        state.offset = state.offset_for(contamination)
        state.contamination = contamination
        self.contamination = contamination
        return self

    # ---------------------------------------------------------- persistence

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object.__getstate__ gives __dict__ itself
        state.pop("_fit_lock", None)
        fitted = state.pop("_state", None)
        if fitted is not None:
            state["_fitted"] = fitted.to_arrays()
        return state

    def __setstate__(self, state):
        from ._engine.persist import load_device
        from torch import nn

        state = dict(state)
        exported = state.pop("_fitted", None)
        super().__setstate__(state)
        if exported is not None:
            arrays, meta = exported
            module = self.backbone if isinstance(self.backbone, nn.Module) else None
            device = load_device(meta["spec"]["device"], self.device)
            self._state = FittedState.from_arrays(arrays, meta, device=device, module=module)

    def save(self, path, *, metadata=None):
        """Write the fitted detector to ``path`` without pickle (see :meth:`load`).

        One file (a zip of ``.npy`` arrays and a JSON config with SHA-256
        hashes), written atomically; see docs/safety.md.

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
            Required when the detector was fitted with a custom module: an
            instance of the same architecture (the saved weights are loaded
            into a copy of it). Must be None for torchvision backbones.

        Returns
        -------
        detector : PadimDetector
        """
        from ._engine.model_file import load

        est, state = load(cls, path, backbone=backbone)
        est._state = state
        return est


def _normal_only(images, y):
    is_anomaly = anomaly_labels(y)
    if len(is_anomaly) != len(images):
        raise ValueError(f"y has {len(is_anomaly)} labels but X has {len(images)} images.")
    keep = np.flatnonzero(~is_anomaly)
    if len(keep) == 0:
        raise ValueError(
            "y marks every image as anomalous; PaDiM is fitted on normal images "
            "(label 0, or +1 in the -1/+1 convention)."
        )
    return images.subset(keep)
