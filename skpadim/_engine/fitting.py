"""Fitting: the embedding chosen at the first call, then images streamed into new states.

:func:`fit` is the one entry of every fit: ``PadimDetector.fit`` and
``partial_fit`` call it, and so does :func:`skpadim.distributed.fit`, with a
:class:`Runner` that streams the images on a cluster instead of in this
process. :func:`start` resolves the backbone, its layers and the channel
subset, and returns an empty :class:`~skpadim._engine.state.FittedState`.
:func:`extend` is one fit call, a transaction: the new images go into fresh
statistics and copies of the calibration sample and of the random
generator; the current statistics are merged into the fresh ones (never the
reverse); :func:`~skpadim._engine.finish.finish`, the one end of every fit,
makes the result a new state, and the one passed in is left exactly as it
was, whether the call succeeds, fails or is interrupted.
"""

import contextlib
import copy
import functools
import threading
from types import SimpleNamespace

import numpy as np
import torch
from sklearn.utils import check_random_state

from .. import _labels
from . import params as _params
from .dtypes import check_backbone_dtype
from .backbone import build_backbone, default_layers, default_n_features
from .embedding import random_feature_index
from .finish import FitOptions, finish
from .images import check_images
from .gaussian import BufferedUpdate
from .memory import OutOfMemoryHint, check_fit_memory, resolve_batch_size
from .progress import stage
from .state import FittedState, check_channels, stats_device
from .tiles import Tiling, check_tiles, memory_advice, update_width
from .taps import LayerTaps, auto_layers, modules_run, probe_shapes, truncate, unused_modules


_lock_guard = threading.Lock()


@contextlib.contextmanager
def one_call_at_a_time(est):
    """Hold ``est``'s fit lock for the call; RuntimeError if another thread holds it."""
    lock = est.__dict__.get("_fit_lock")
    if lock is None:
        with _lock_guard:
            lock = est.__dict__.setdefault("_fit_lock", threading.Lock())
    if not lock.acquire(blocking=False):
        raise RuntimeError(
            "fit or partial_fit is already running on this PadimDetector in another "
            "thread; calls that add images must run one at a time (predictions may run "
            "alongside them)."
        )
    try:
        yield
    finally:
        lock.release()


class Runner:
    """How a fit call gets its images' statistics: in this process (this class).

    :mod:`skpadim.distributed` subclasses it to stream the images on the
    workers of a cluster and to run the end of the fit there by blocks of
    positions (:func:`~.finish.finish_positions`); everything else of a fit
    call is the same code.
    """

    resumes = True  # whether it can add images to a fitted state (partial_fit)

    def images(self, X):
        """``X`` as an :class:`~skpadim._images.ImageSet` (checked)."""
        return check_images(X)

    def first_size(self, images):
        """(H, W) of the first image: ``image_size=None`` keeps it for every image."""
        item = images._array[0] if images._array is not None else images._item(0)
        return tuple(int(v) for v in item.shape[:2])

    def statistics(self, state, images, params, draw, options, hint):
        """``(stats, sample, finished)``: the statistics and calibration sample of
        ``state``'s images and ``images`` (keys ``draw(B)`` per batch of B images, in
        input order), and the end of fit per position if it was computed (else None).
        ``hint`` explains out-of-memory errors."""
        stats, sample = accumulate(state, images, params, draw, hint=hint)
        if state.stats is not None:
            with torch.inference_mode(), hint, hint.at("end"), stage("precision"):
                stats.combine(state.stats)
        return stats, sample, None


LOCAL = Runner()


def fit(est, X, y=None, *, reset, runner=LOCAL):
    """Fit ``est`` on ``X`` (``reset``: from scratch, else add to its fitted state).

    Takes ``est``'s fit lock, validates its parameters once (a ``set_params``
    from another thread during the call does not change them half-way), and
    swaps in the new state when the call succeeds: a failed ``partial_fit``
    leaves the detector as it was; a failed ``fit`` leaves it unfitted.
    """
    with one_call_at_a_time(est):
        params = SimpleNamespace(**_params.validated(est))  # invalid: nothing changes
        if reset:
            est.__dict__.pop("_state", None)  # its memory is free for the new fit
        elif not runner.resumes and est.__dict__.get("_state") is not None:
            raise ValueError("This runner fits from scratch only.")
        est._state = fit_call(est.__dict__.get("_state"), params, X, y, runner)
    return est


def fit_call(state, params, X, y, runner=LOCAL):
    """The new state of one fit call: ``state`` (None: a first call) plus the images of X."""
    check_combination(params)
    if state is not None:
        check_frozen(state, params)
    images = runner.images(X)
    if y is not None:
        images = normal_only(images, y)
    if state is None:
        state = start(params, images, runner.first_size)
    else:
        check_channels(state, images)
    return extend(state, images, params, runner)


def check_combination(params):
    """Refuse parameter values that are valid alone but not together, before any work."""
    if params.shift_tolerance and params.tile_size is not None:
        raise ValueError(
            f"shift_tolerance={params.shift_tolerance} is not supported with tile_size="
            f"{params.tile_size!r} yet (the neighbouring Gaussians of a tile's border patches "
            "belong to other tiles); use one of the two, or overlapping tiles (tile_stride) "
            "for shifts."
        )


def normal_only(images, y):
    is_anomaly = _labels.anomaly_labels(y)
    if len(is_anomaly) != len(images):
        raise ValueError(f"y has {len(is_anomaly)} labels but X has {len(images)} images.")
    keep = np.flatnonzero(~is_anomaly)
    if len(keep) == 0:
        raise ValueError(
            "y marks every image as anomalous; PaDiM is fitted on normal images "
            "(label 0, or +1 in the -1/+1 convention)."
        )
    return images.subset(keep)


def start(est, images, first_size=LOCAL.first_size):
    """An empty state for ``est``'s parameters (already validated) and first images
    (``first_size(images)``: the size of the first, for ``image_size=None``)."""
    _params.check_custom_module_layers(est)
    device = _params.resolve_device(est.device)
    check_backbone_dtype(est.backbone_dtype, device)
    rng = check_random_state(est.random_state)
    model, _ = build_backbone(est.backbone, est.weights, seed=rng.randint(2**31 - 1), device=device)
    model = model.eval().requires_grad_(False).to(device)
    size = _params.image_size_pair(est.image_size) if est.image_size is not None else first_size(images)
    tiles = None
    if est.tile_size is not None:
        tile, stride = check_tiles(est.tile_size, est.tile_stride, size)
        tiles = Tiling(size, tile, stride, est.tile_sharing)
    layers = est.layers if est.layers is not None else default_layers(est.backbone)
    if layers is None:
        layers = auto_layers(model, device)
    taps = LayerTaps(model, layers)
    with modules_run(model) as ran:  # one probe gives the shapes and the modules that run
        shapes = probe_shapes(taps, size if tiles is None else tiles.size, device)
    total = sum(c for c, _, _ in shapes)
    n_features = est.n_features or default_n_features(est.backbone) or total
    if n_features > total:
        raise ValueError(
            f"The 'n_features' parameter of PadimDetector is {n_features}, but layers "
            f"{list(layers)!r} have only {total} channels; use at most {total}."
        )
    index = random_feature_index(total, n_features, rng)
    removed = unused_modules(model, ran)
    truncate(model, removed, layers[-1])
    params = _params.embedding_params(est)
    norm = _params.normalization(est.normalize)
    spec = {
        "backbone": params["backbone"],
        "layers": list(layers),
        "shapes": [[int(v) for v in s] for s in shapes],
        "removed": removed,
        "image_size": list(size),
        "normalize": None if norm is None else [list(norm[0]), list(norm[1])],
        "n_channels": images.n_channels,
        "device": str(device),
        "params": params,
    }
    if tiles is not None:
        spec["tiles"] = tiles.to_spec()
    if est.neighbourhood != 1:  # (absent: the paper's embedding, as in earlier files)
        spec["neighbourhood"] = int(est.neighbourhood)
    sampler = np.random.default_rng(rng.randint(2**31 - 1))  # draws the calibration keys
    return FittedState.empty(spec, index, model, device, sampler, taps)


def check_frozen(state, est):
    """Refuse a ``partial_fit`` whose embedding parameters differ from the first call's."""
    old, new = state.spec["params"], _params.embedding_params(est)
    for name in {**old, **new}:
        default = _params.OPTIONAL_DEFAULTS.get(name)
        before, after = old.get(name, default), new.get(name, default)
        if before != after:
            raise ValueError(
                f"The {name!r} parameter changed from {before!r} to {after!r} since "
                "the first partial_fit call; it defines the embedding, so call fit to start "
                "over with the new value."
            )


def extend(state, images, est, runner=LOCAL):
    """A new state: ``state`` plus ``images``, finished with ``est``'s parameters."""
    hint = OutOfMemoryHint(state.device, est.batch_size, est.image_size, state.shape[1])
    rng = copy.deepcopy(state.rng)
    options = FitOptions.of(est)
    stats, sample, finished = runner.statistics(state, images, est, rng.random, options, hint)
    with torch.inference_mode(), hint, hint.at("end"):
        return finish(state, stats, sample, rng, options, finished)


def accumulate(state, images, est, draw, *, hint=None):
    """``(stats, sample)``: fresh statistics of ``images`` and a copy of ``state``'s sample
    offered them, with keys ``draw(B)`` for each batch of B images, in input order.

    ``state`` itself is not changed; its statistics are not included. A
    distributed fit calls this on each partition, with keys drawn for it in
    advance from the one generator that a one-process fit would use.
    """
    P, d = state.shape
    device = state.device
    width = update_width(state.layout, P, d)
    check_fit_memory(P, d, state.layout.kept_item_bytes(), stats_device(device),
                     held_bytes=state.nbytes(), width=width, advice=memory_advice(state.layout))
    if hint is None:
        hint = OutOfMemoryHint(device, est.batch_size, est.image_size, d)
    stats = state.new_stats()
    sample = state.sample.copy()
    seen = state.n
    take = state.layout.take
    hint.batch_size = batch_size = resolve_batch_size(est.batch_size, state)  # with the sums allocated
    with torch.inference_mode(), hint:
        updates = BufferedUpdate(stats, width)
        for emb, sizes, feats in state.embedder.batches(images, batch_size, desc="fit", verbose=est.verbose,
                                                        fitting=True):
            B = len(sizes)  # images (with shared tiles, emb has a column per tile)
            with stage("reservoir"):
                sample.offer(draw(B), seen, functools.partial(take, feats))
            seen += B
            with stage("update"):
                updates.add(emb.to(stats.outer.device))
        with stage("update"):
            updates.flush()
        del updates  # its buffer is not needed for the end-of-fit work
    return stats, sample
