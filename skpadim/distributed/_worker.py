"""What runs on the workers: partitions streamed into statistics, merges, the end of fit.

Everything that travels between tasks is numpy arrays, in the layout of
:meth:`~skpadim._engine.state.FittedState.to_arrays` but for the matrices,
which travel whole (see :func:`stats_arrays`), never a torch module: each worker
rebuilds the backbone once per fit from the scattered model description
(:func:`base_state`) and keeps it for the fit's other tasks.

A partition's result is a pure function of its images and of the keys
drawn for them on the client, so a task that Dask recomputes after a worker
died gives the same result, and every image is counted once.
"""

import collections
import threading
from types import SimpleNamespace

import numpy as np
import torch

from .._engine import params as _params
from .._engine.calibration import CalibrationSample
from .._engine.fitting import accumulate
from .._engine.gaussian import GaussianStats
from .._engine.images import check_images
from .._engine.persist import backbone_weights, rebuild_backbone
from .._engine.state import FittedState, stats_device

_lock = threading.Lock()
_states = collections.OrderedDict()  # token -> FittedState (empty), the last few fits
_KEEP = 2
# Images this process streamed into partition statistics (tests read it).
images_fitted = collections.Counter()


def base_state(model):
    """The empty fitted state of the fit ``model`` describes, built once per process."""
    token = model["token"]
    with _lock:
        state = _states.get(token)
        if state is None:
            device = _params.resolve_device(model["device"])  # "auto": this worker's own
            weights = backbone_weights(model["weights"])
            backbone = rebuild_backbone(model["spec"], weights, model["module"], "the fitted model")
            state = FittedState.empty(model["spec"], model["feature_index"], backbone, device,
                                      np.random.default_rng(0))
            _states[token] = state
            while len(_states) > _KEEP:
                _states.popitem(last=False)
        else:
            _states.move_to_end(token)
        return state


def fit_partition(model, paths, keys, bounds):
    """Statistics and calibration sample of ``paths``, split by blocks of positions.

    ``keys``: the calibration keys of these images, drawn on the client.
    Returns ``{"n", "sample", "blocks"}``; the sample's ids count from 0.
    """
    state = base_state(model)
    est = SimpleNamespace(batch_size=model["batch_size"], image_size=model["image_size"], verbose=False)
    offset = [0]

    def draw(B):  # the keys of the next B images, whatever the batching
        out = keys[offset[0] : offset[0] + B]
        offset[0] += B
        return out

    stats, sample = accumulate(state, check_images(list(paths)), est, draw)
    if stats.n != len(keys):
        raise RuntimeError(f"fitted {stats.n} images, expected {len(keys)}")
    images_fitted[model["token"]] += stats.n
    return {"n": stats.n, "sample": sample_arrays(sample),
            "blocks": [stats_arrays(stats, a, b) for a, b in bounds]}


def pick(result, what, b=None):
    """One block (``what="blocks"``) or the sample of a partition's result."""
    if what == "sample":
        return {"n": result["n"], **result["sample"]}
    return {"n": result["n"], **result["blocks"][b]}


def sample_arrays(sample):
    """A calibration sample as arrays; items: per image, its kept channels by layer."""
    return {"keys": sample.keys, "ids": sample.ids,
            "items": [[np.asarray(t.cpu()) if torch.is_tensor(t) else t for t in item]
                      for item in sample.items]}


def to_sample(arrays, device=None):
    """A :class:`CalibrationSample` (items as tensors on ``device``; None: numpy)."""
    items = arrays["items"]
    if device is not None:
        items = [[torch.from_numpy(a).to(device) for a in item] for item in items]
    return CalibrationSample(arrays["keys"], arrays["ids"], items)


def merge_samples(*parts):
    """The calibration sample of consecutive partitions, in order (ids shifted)."""
    out, n = to_sample(parts[0]), parts[0]["n"]
    for p in parts[1:]:
        out = out.merged(to_sample(p), id_offset=n)
        n += p["n"]
    return {"n": n, **sample_arrays(out)}


def stats_arrays(stats, a, b):
    """Positions ``a:b`` of ``stats`` as arrays (the sums of outer products whole: packing
    their upper triangles halves the bytes but costs more CPU time than it saves)."""
    return {"shift": stats.shift[a:b].cpu().numpy(), "total": stats.total[a:b].cpu().numpy(),
            "outer": stats.outer[a:b].cpu().numpy()}


def to_stats(block, device="cpu", copy=False):
    """``block`` as GaussianStats; ``copy=True`` to modify them (task inputs are shared)."""
    own = np.array if copy else np.asarray
    stats = GaussianStats(block["n"], *(torch.from_numpy(own(block[k])) for k in ("shift", "total", "outer")))
    return stats.to(device)


def merge_blocks(*blocks):
    """The statistics of one block of positions over consecutive partitions (Chan et al.)."""
    with torch.inference_mode():
        stats = to_stats(blocks[0], copy=True)
        for blk in blocks[1:]:
            if blk["n"]:
                stats.combine(to_stats(blk))
        return {"n": stats.n, **stats_arrays(stats, 0, stats.shape[0])}


def finalize_block(model, block, sample, epsilon, a, b):
    """The end of fit for positions ``a:b``: precisions and held-out calibration distances."""
    state = base_state(model)
    device = stats_device(state.embedder.device)
    with torch.inference_mode():
        stats = to_stats(block, device)
        precision = stats.precision(epsilon)
        sample = to_sample(sample, state.embedder.device)
        partial = state.replaced(stats, sample, None)
        dist = partial.calibration_distances(stats, epsilon, slice(a, b))
    return {**block, "precision": precision.cpu().numpy(), "distances": dist.cpu().numpy()}
