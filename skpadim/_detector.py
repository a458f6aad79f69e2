"""PadimDetector: PaDiM (Defard et al. 2020) as a scikit-learn outlier detector."""

import contextlib
import copy
import functools
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._engine import params as _params
from ._engine.backbone import build_backbone, default_layers, default_n_features
from ._engine.calibration import Reservoir, offset_from_scores
from ._engine.distances import mahalanobis
from ._engine.embedding import PatchEmbedding, random_feature_index
from ._engine.gaussian import BufferedUpdate, GaussianStats
from ._engine.heap import heap_reuse
from ._engine.images import check_images, resize
from ._engine.maps import anomaly_maps
from ._engine.persist import modules_run, restore_state, slim_state, used_state_keys
from ._engine.taps import LayerTaps, auto_layers, probe_shapes
from ._labels import anomaly_labels
from .exceptions import DeviceOutOfMemoryError

# Private fitted state, removed by fit (public fitted attributes end with "_").
_STATE = (
    "_cache", "_calibration", "_embedding", "_epsilon", "_sigma", "_frozen", "_image_size",
    "_norm", "_reservoir", "_rng", "_shapes", "_stats", "_taps", "_used_keys",
)
# Parameters that define the embedding: they cannot change between partial_fit calls.
_FROZEN = ("backbone", "layers", "weights", "n_features", "image_size", "normalize")


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
        A torchvision classification model name (``"resnet18"``,
        ``"wide_resnet50_2"``, ``"efficientnet_b0"``, ...) or any module
        whose forward pass takes a (B, 3, H, W) image batch. The module is
        copied at fit; the original is never modified.
    layers : list of str, default=None
        Names of the modules whose outputs form the embedding (see
        ``module.named_modules()``). ``None`` means the paper's choice for
        ResNets (``layer1``, ``layer2``, ``layer3``) and, for other
        torchvision models, the last stage at strides 4, 8 and 16. Required
        for a custom module.
    weights : str, WeightsEnum, path or None, default="DEFAULT"
        For a torchvision name: ``"DEFAULT"``, a member name of the model's
        weights enum (e.g. ``"IMAGENET1K_V1"``), the enum member itself,
        ``None`` for random initialization, or the path of a state_dict file
        (read with ``torch.load(..., weights_only=True)``). Pretrained
        weights come from torchvision's cache (``torch.hub.get_dir()``);
        when they are missing and there is no network, ``fit`` says how to
        provide them. For a custom module: ``"DEFAULT"`` or ``None`` use the
        module as given, a path loads that state_dict into the copy.
    n_features : int, default=None
        Number of channels kept, at random, from the concatenated layers.
        ``None`` means the paper's numbers (resnet18: 100, wide_resnet50_2:
        550) and all channels for other backbones.
    image_size : int or (int, int), default=224
        Every image is resized (bilinear, antialiased) to this size before
        the backbone.
    epsilon : float, default=0.01
        Covariance regularization: Sigma = unbiased sample covariance +
        epsilon * I.
    sigma : float, default=4.0
        Standard deviation, in pixels of ``image_size``, of the Gaussian
        smoothing of anomaly maps; 0 disables it.
    contamination : 'auto' or float in (0, 0.5], default='auto'
        Sets ``offset_`` so that ``predict`` works right after ``fit``. The
        threshold is calibrated on held-out training images scored by a
        Gaussian fitted without them (see Notes). A float flags that fraction
        of the calibration images; ``'auto'`` uses Tukey's far-out fence,
        Q3 + 3 * IQR of their anomaly scores.
    normalize : 'imagenet', None or (mean, std), default='imagenet'
        Per-channel normalization applied to images in [0, 1] before the
        backbone: ImageNet's mean and std, none, or your own pair of
        3-tuples (use the values your backbone was trained with).
    batch_size : int, default=32
        Images per forward pass.
    device : str or torch.device, default="auto"
        ``"auto"`` picks cuda, then mps, then cpu. Fitted attributes are
        numpy arrays on the CPU whatever the device.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset, the choice of calibration images and, with
        ``weights=None``, the random initialization of the backbone (torch's
        global random state is left alone).
    verbose : bool, default=False
        Show progress bars.

    Attributes
    ----------
    mean_ : ndarray of shape (P, d), float64
        Mean embedding per patch position, P = h * w positions in row-major
        order, d = number of kept channels.
    precision_ : ndarray of shape (P, d, d), float32
        Inverse of covariance + epsilon * I per position (through Cholesky).
    feature_index_ : ndarray of shape (d,)
        Sorted indices of the kept channels in the concatenated layers.
    feature_map_shape_ : tuple (h, w)
        Patch grid size.
    layers_ : tuple of str
        The layers used.
    n_samples_seen_ : int
        Number of normal images fitted.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    device_ : torch.device
        Where the computation runs.

    See Also
    --------
    skpadim.metrics : AUROC, AUPRO, F1 and scorers for model selection.

    Notes
    -----
    Threshold calibration: while streaming, up to 64 training images are
    kept as a uniform random sample (reservoir sampling). At the end of
    each ``fit``/``partial_fit`` call, the first ``k = min(64, n // 5)`` of
    them (at least 1) are scored by the Gaussians fitted on all *other*
    images (their statistics are subtracted, no second pass over the
    backbone), and ``offset_`` is set from those honest, out-of-sample
    scores. Scores of images the Gaussians were fitted on are optimistic,
    and would give thresholds that flag too many new normal images. The
    final Gaussians still use every image. With a single training image the
    threshold uses its in-sample score.

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
        self._reset()
        return self.partial_fit(X, y)

    def partial_fit(self, X, y=None):
        """Add images to the running statistics (same result as one ``fit``).

        Parameters that define the embedding (backbone, layers, weights,
        n_features, image_size, normalize) must not change between calls.
        If the call fails or is interrupted, the detector keeps its previous
        state.

        Parameters
        ----------
        X, y : see :meth:`fit`.

        Returns
        -------
        self : PadimDetector
        """
        first = not hasattr(self, "_stats")
        if first:
            _params.validate(self)
        else:
            self._check_frozen()
        images = check_images(X)
        if y is not None:
            images = _normal_only(images, y)
        if first:
            self._initialize(images)
        else:
            self._check_channels(images)
        try:
            self._fit_images(images, first)
        except BaseException:
            if first:
                self._reset()
            raise
        return self

    def _initialize(self, images):
        device = _params.resolve_device(self.device)
        rng = check_random_state(self.random_state)
        model, _ = build_backbone(self.backbone, self.weights, seed=rng.randint(2**31 - 1))
        model = model.eval().requires_grad_(False).to(device)
        size = _params.image_size_pair(self.image_size)
        layers = self.layers if self.layers is not None else default_layers(self.backbone)
        if layers is None:
            layers = auto_layers(model, device)
        taps = LayerTaps(model, layers)
        with modules_run(model) as ran:  # one probe pass gives the shapes and the used weights
            shapes = probe_shapes(taps, size, device)
        total = sum(c for c, _, _ in shapes)
        n_features = self.n_features or default_n_features(self.backbone) or total
        if n_features > total:
            raise ValueError(
                f"The 'n_features' parameter of PadimDetector is {n_features}, but layers "
                f"{list(layers)!r} have only {total} channels; use at most {total}."
            )
        index = random_feature_index(total, n_features, rng)
        embedding = PatchEmbedding(shapes, index, device)
        _check_memory(embedding.n_positions, n_features, device)
        self.device_ = device
        self.backbone_ = model
        self.layers_ = tuple(layers)
        self.feature_index_ = index
        self.feature_map_shape_ = embedding.grid
        self.n_channels_in_ = images.n_channels
        self._frozen = {k: getattr(self, k) for k in _FROZEN}
        self._shapes = shapes
        self._used_keys = used_state_keys(model, ran) if isinstance(self.backbone, str) else None
        self._image_size = size
        self._norm = _params.normalization(self.normalize)
        self._taps = taps
        self._embedding = embedding
        self._rng = rng
        self._reservoir = Reservoir()
        self._stats = GaussianStats.empty(embedding.n_positions, n_features, _stats_device(device))

    def _fit_images(self, images, first):
        # Transactional: the new images go into fresh statistics, a copy of the
        # reservoir and of the random state; the old statistics are merged into
        # the new ones (never the reverse), and the detector's state is only
        # replaced at the end. A failure or interruption leaves it unchanged.
        epsilon, sigma = float(self.epsilon), float(self.sigma)
        stats = self._stats if first else GaussianStats.empty(*self._stats.shape, self._stats.outer.device)
        reservoir = self._reservoir.copy()
        rng = self._rng if first else copy.deepcopy(self._rng)
        seen = self._stats.n
        with heap_reuse(), torch.inference_mode(), _out_of_memory_hint(self):
            updates = BufferedUpdate(stats)
            for emb, _, feats in self._embeddings(images, desc="fit"):
                with _stage("reservoir"):
                    reservoir.offer(emb.shape[-1], seen, rng, functools.partial(self._embedding.kept_channels, feats))
                seen += emb.shape[-1]
                with _stage("update"):
                    updates.add(emb.to(stats.outer.device))
            with _stage("update"):
                updates.flush()
            del updates  # its buffer is not needed for the end-of-fit work
            with _stage("precision"):
                if not first:
                    stats = stats.combine(self._stats)
                mean = stats.mean()
                precision = stats.precision(epsilon)
            with _stage("calibration"):
                scores = self._calibration_scores(stats, reservoir, epsilon, sigma)
        self._epsilon, self._sigma = epsilon, sigma
        self._stats = stats
        self._reservoir = reservoir
        self._rng = rng
        self.mean_ = mean.cpu().numpy()
        self.precision_ = precision.cpu().numpy()
        self.n_samples_seen_ = stats.n
        self._calibration = scores
        self.offset_ = offset_from_scores(scores, self.contamination)
        self._cache = None

    def _calibration_scores(self, stats, reservoir, epsilon, sigma):
        """Anomaly scores (score_samples convention) of held-out calibration images."""
        emb, held_out = reservoir.held_out(stats.n, self._embedding.embed_kept)
        dist = stats.distances_of(emb.to(stats.outer.device), epsilon, held_out=held_out)  # (P, k)
        dist = dist.T.float().reshape(-1, *self.feature_map_shape_).to(self.device_)
        maps = anomaly_maps(dist, self._image_size, sigma)
        return -maps.amax(dim=(1, 2)).double().cpu().numpy()

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
            Also return ``score_samples(X)``, computed in the same pass over
            the backbone (the score is taken before the resize to each
            image's own size, exactly as :meth:`score_samples` does).

        Returns
        -------
        maps : ndarray of shape (N, H, W), float32, or a list of (H_i, W_i)
            arrays when the images have different sizes.
        scores : ndarray of shape (N,), float64
            Only with ``return_scores=True``.
        """
        out, scores = [], []
        for maps, sizes in self._maps(X, desc="anomaly_map"):
            scores.append(-maps.amax(dim=(1, 2)).double().cpu().numpy())
            for m, size in zip(maps, sizes):
                m = resize(m[None, None], size)[0, 0] if tuple(m.shape) != size else m
                out.append(m.cpu().numpy())
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
        scores = [-m.amax(dim=(1, 2)).double().cpu().numpy() for m, _ in self._maps(X, desc="score")]
        return np.concatenate(scores)

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

    def _maps(self, X, desc):
        check_is_fitted(self, "precision_")
        images = check_images(X)
        self._check_channels(images)
        mean, precision = self._torch_stats()
        h, w = self.feature_map_shape_
        with heap_reuse(), torch.inference_mode(), _out_of_memory_hint(self):
            for emb, sizes, _ in self._embeddings(images, desc=desc):
                with _stage("mahalanobis"):
                    dist = mahalanobis(emb, mean, precision).reshape(-1, h, w)
                with _stage("maps"):
                    maps = anomaly_maps(dist, self._image_size, self._sigma)
                yield maps, sizes

    # -------------------------------------------------------------- helpers

    def _embeddings(self, images, desc):
        """Yield (P, d, B) embeddings (a reused buffer), original sizes and layer features."""
        batches = images.batches(self.batch_size, self._image_size, self.device_)
        bar = _progress_bar(len(images), desc) if self.verbose else None
        mean = std = None
        if self._norm is not None:
            mean = torch.tensor(self._norm[0], device=self.device_).view(1, 3, 1, 1)
            std = torch.tensor(self._norm[1], device=self.device_).view(1, 3, 1, 1)
        try:
            while True:
                with _stage("decode"):
                    batch = next(batches, None)
                if batch is None:
                    break
                x, sizes = batch
                with _stage("backbone"):
                    if mean is not None:
                        x = (x - mean) / std
                    feats = self._taps(x)
                with _stage("embedding"):
                    emb = self._embedding(feats)
                yield emb, sizes, feats
                if bar is not None:
                    bar.update(len(sizes))
        finally:
            if bar is not None:
                bar.close()

    def _torch_stats(self):
        key = (id(self.mean_), id(self.precision_))
        if getattr(self, "_cache", None) is None or self._cache[0] != key:
            mean = torch.from_numpy(self.mean_).float().to(self.device_)
            prec = torch.from_numpy(self.precision_).to(self.device_)
            self._cache = (key, mean, prec)
        return self._cache[1], self._cache[2]

    def _check_frozen(self):
        for name, old in self._frozen.items():
            new = getattr(self, name)
            same = new is old if hasattr(old, "parameters") else _equal(new, old)
            if not same:
                raise ValueError(
                    f"The {name!r} parameter changed from {old!r} to {new!r} since the "
                    "first partial_fit call; it defines the embedding, so call fit to "
                    "start over with the new value."
                )

    def _check_channels(self, images):
        fitted = getattr(self, "n_channels_in_", None)
        if fitted is not None and images.n_channels is not None and images.n_channels != fitted:
            kind = {1: "grayscale (1 channel)", 3: "color (3 channels)"}
            raise ValueError(
                f"X holds {kind[images.n_channels]} images, but the detector was fitted on "
                f"{kind[fitted]} images. Convert X to the training images' channel count."
            )

    def _reset(self):
        for name in list(vars(self)):
            if (name.endswith("_") and not name.startswith("__")) or name in _STATE:
                delattr(self, name)

    def __getstate__(self):
        return slim_state(super().__getstate__())

    def __setstate__(self, state):
        super().__setstate__(restore_state(state, self))

    def save(self, path):
        """Write the fitted detector to ``path`` without pickle (see :meth:`load`).

        One file (a zip of ``.npy`` arrays and a JSON config with SHA-256
        hashes), written atomically; see docs/safety.md.

        Parameters
        ----------
        path : str or os.PathLike
        """
        from ._engine.model_file import save

        save(self, path)

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

        return load(cls, path, backbone=backbone)


def _stage(name):
    """A ``torch.profiler.record_function`` range named ``skpadim.<name>``.

    The stages of fit and predict (decode, backbone, embedding, reservoir,
    update, precision, calibration, mahalanobis, maps) show up under these
    names in a torch profiler trace; benchmarks/speed.py times them that way.
    """
    return torch.profiler.record_function(f"skpadim.{name}")


def _progress_bar(total, desc, disable=False):
    """A bar over images (not batches) with the rate and the time left."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="img", dynamic_ncols=True, disable=disable,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} images "
        "[{elapsed} elapsed, {remaining} left, {rate_fmt}]",
    )


def _equal(a, b):
    try:
        return bool(a == b)
    except Exception:  # arrays, odd objects
        return a is b


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


def _stats_device(device):
    # MPS has no float64: keep the running sums on the CPU there.
    return torch.device("cpu") if device.type == "mps" else device


def _check_memory(n_positions, n_features, device):
    """Refuse covariances that cannot fit, before any image is processed."""
    # Running sums + precision + the update buffer, float32.
    need = 4 * n_positions * n_features * (2 * n_features + BufferedUpdate.WIDTH)
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[1]
    else:
        try:
            import os

            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if need > 0.8 * available:
        raise ValueError(
            f"n_features={n_features} with {n_positions} patch positions needs about "
            f"{need / 2**30:.1f} GiB for the per-position covariances, more than this "
            f"{device.type} device has ({available / 2**30:.1f} GiB). Lower n_features "
            "(the paper uses 100 for resnet18 and 550 for wide_resnet50_2) or image_size."
        )


_OOM_TYPES = tuple(
    {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)} - {None}
)


@contextlib.contextmanager
def _out_of_memory_hint(est):
    """Re-raise the device's out-of-memory errors as a MemoryError saying what to lower."""
    try:
        yield
    except _OOM_TYPES as exc:
        n_features = len(getattr(est, "feature_index_", ())) or est.n_features
        raise DeviceOutOfMemoryError(
            f"Out of memory on {getattr(est, 'device_', est.device)} while processing a batch "
            f"of batch_size={est.batch_size} images (image_size={est.image_size!r}, "
            f"n_features={n_features}). Use a smaller batch_size, e.g. "
            f"batch_size={max(1, est.batch_size // 2)}; if even batch_size=1 fails, lower "
            f"image_size or n_features. ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from exc
