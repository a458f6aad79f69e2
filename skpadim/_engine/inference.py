"""Prediction: anomaly maps and image scores from one fitted state.

Every function takes the :class:`~skpadim._engine.state.FittedState` to use
and reads nothing else of the detector, so a call started before a
``partial_fit`` in another thread ends with the state it started with.
Nothing here writes to shared memory: the backbone's hooks and the
embedding buffer are per calling thread, the means and precisions are only
read.

The maps are computed, smoothed and resized on the device batch by batch;
the host waits for none of them: the scores stay on the device until the
end of the call (one copy), and the maps reach their numpy array through a
:class:`~.transfer.HostSink`, one copy per batch, that overlaps the next
batches' work.
"""

import numpy as np
import torch

from .distances import mahalanobis, mahalanobis_min
from .images import resize
from .maps import image_scores
from .memory import OutOfMemoryHint, resolve_batch_size
from .progress import stage
from .transfer import HostSink


def iter_maps(state, images, batch_size, *, verbose=False, desc="score"):
    """Yield ``(maps, sizes)``: (B, *image_size) float tensors and the images' own sizes
    (``batch_size``: an int, or ``"auto"``, :func:`~.memory.resolve_batch_size`)."""
    h, w = state.grid
    batch_size = resolve_batch_size(batch_size, state)
    hint = OutOfMemoryHint(state.device, batch_size, state.layout.image_size, state.shape[1])
    with torch.inference_mode(), hint:
        for emb, sizes, _ in state.embedder.batches(images, batch_size, desc=desc, verbose=verbose):
            with stage("mahalanobis"):
                if state.shift_tolerance:
                    dist = mahalanobis_min(emb, state.device_mean, state.device_precision, (h, w),
                                           state.shift_tolerance)
                else:
                    dist = mahalanobis(emb, state.device_mean, state.device_precision)
                dist = dist.reshape(-1, h, w)
            with stage("maps"):
                maps = state.layout.maps(dist, state.sigma, sizes[0])
            yield maps, sizes


def _scores(parts):
    """``score_samples`` of the images, from their maps' image scores (device tensors)."""
    return -torch.cat(parts).double().cpu().numpy()


def score_samples(state, images, batch_size, verbose=False):
    parts = [image_scores(m, state.image_score) for m, _ in iter_maps(state, images, batch_size, verbose=verbose)]
    return _scores(parts)


def anomaly_map(state, images, batch_size, verbose=False):
    """``(maps, scores)``: maps at each image's own size (stacked if all equal), scores.

    An array of images (all of one size) gets its maps in one array allocated
    at the start; a list gets one array per batch, cut into one view per image.
    """
    sink = HostSink(state.device)
    parts = []
    array = images._array  # all of one size: their maps go straight to the result
    out = None if array is None else np.empty((len(array), *array.shape[1:3]), np.float32)
    views, start = [], 0
    for maps, sizes in iter_maps(state, images, batch_size, verbose=verbose, desc="anomaly_map"):
        parts.append(image_scores(maps, state.image_score))
        if out is not None:
            size = tuple(out.shape[1:])
            if tuple(maps.shape[1:]) != size:
                maps = resize(maps[:, None], size)[:, 0]
            sink.put(out[start : start + len(sizes)], maps)
            start += len(sizes)
            continue
        flat = [(resize(m[None, None], size)[0, 0] if tuple(m.shape) != size else m).reshape(-1)
                for m, size in zip(maps, sizes)]
        host = np.empty(sum(int(f.numel()) for f in flat), np.float32)
        sink.put(host, torch.cat(flat) if len(flat) > 1 else flat[0])
        edges = np.cumsum([0] + [h * w for h, w in sizes])
        views += [host[a:b].reshape(size) for a, b, size in zip(edges[:-1], edges[1:], sizes)]
    scores = _scores(parts)
    sink.finish()
    if out is None:
        out = np.stack(views) if len({v.shape for v in views}) == 1 else views
    return out, scores
