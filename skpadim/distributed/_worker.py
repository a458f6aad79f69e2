"""What runs on the workers: partitions streamed into statistics, merges, the end of fit.

Everything that travels between tasks is numpy arrays, in the layout of
:meth:`~skpadim._engine.state.FittedState.to_arrays` but for the matrices,
which travel whole (see :func:`stats_arrays`), never a torch module: each worker
rebuilds the backbone once per fit from the scattered model description
(:func:`base_state`) and keeps it for the fit's other tasks. The end of fit
of a block of positions (:func:`finish_block`) needs the statistics and the
layout of the patches only (:class:`~skpadim._engine.layout.Layout`), never
the backbone.

A partition's result is a pure function of its images and of the keys
drawn for them on the client, so a task that Dask recomputes after a worker
died gives the same result, and every image is counted once.
"""

import collections
import pickle
import threading
from types import SimpleNamespace

import numpy as np
import torch

from .._engine import params as _params
from .._engine.calibration import CalibrationSample
from .._engine.finish import FitOptions, finish_positions, held_out_embedding
from .._engine.fitting import accumulate
from .._engine.gaussian import GaussianStats
from .._engine.images import check_images
from .._engine.layout import Layout
from .._engine.persist import backbone_weights, rebuild_backbone
from .._engine.state import FittedState, stats_device
from .._images import read_image

_lock = threading.Lock()
_states = collections.OrderedDict()  # (kind, token) -> FittedState (empty) or Layout, the last few fits
_KEEP = 4
# Images this process streamed into partition statistics (tests read it).
images_fitted = collections.Counter()


def _cached(kind, model, build):
    key = (kind, model["token"])
    with _lock:
        value = _states.get(key)
        if value is None:
            value = _states[key] = build()
            while len(_states) > _KEEP:
                _states.popitem(last=False)
        else:
            _states.move_to_end(key)
        return value


def base_state(model):
    """The empty fitted state of the fit ``model`` describes, built once per process."""

    def build():
        device = _params.resolve_device(model["device"])  # "auto": this worker's own
        weights = backbone_weights(model["weights"])
        module = None if model["module"] is None else pickle.loads(model["module"])
        backbone = rebuild_backbone(model["spec"], weights, module, "the fitted model")
        return FittedState.empty(model["spec"], model["feature_index"], backbone, device,
                                 np.random.default_rng(0))

    return _cached("state", model, build)


def layout(model):
    """The :class:`Layout` of the fit ``model`` describes (no backbone), built once per process."""
    return _cached("layout", model, lambda: Layout(
        model["spec"], model["feature_index"], _params.resolve_device(model["device"])))


def image_size(path):
    """(H, W) of an image file, decoded as the detector decodes it."""
    return tuple(int(v) for v in read_image(path).shape[:2])


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
    n = stats.n // state.layout.samples_per_image  # (shared tiles: each counts n_tiles times)
    if n != len(keys):
        raise RuntimeError(f"fitted {n} images, expected {len(keys)}")
    images_fitted[model["token"]] += n
    return {"n": n, "sample": sample_arrays(sample),
            "blocks": [{"n": stats.n, **stats_arrays(stats, a, b)} for a, b in bounds]}


def pick(result, what, b=None):
    """One block (``what="blocks"``) or the sample of a partition's result."""
    if what == "sample":
        return {"n": result["n"], **result["sample"]}  # n: images
    return result["blocks"][b]  # n: samples of the statistics


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


def finish_block(model, block, sample, options, first):
    """The end of fit for the block of positions that starts at ``first``: its precisions
    and the held-out calibration images' squared distances to its Gaussians
    (:func:`~skpadim._engine.finish.finish_positions`, as in one process)."""
    options = FitOptions(*options)
    lay = layout(model)
    device = stats_device(lay.device)
    with torch.inference_mode():
        stats = to_stats(block, device)
        n = stats.n // lay.samples_per_image
        emb, held_out = held_out_embedding(lay, to_sample(sample, lay.device), n, device)
        precision, squared = finish_positions(stats, emb, options, lay.grid, first, held_out=held_out)
    return {**block, "precision": precision.cpu().numpy(),
            "squared": torch.stack(squared).cpu().numpy()}
