"""Prediction: anomaly maps and image scores from one fitted state.

Every function takes the :class:`~skpadim._engine.state.FittedState` to use
and reads nothing else of the detector, so a call started before a
``partial_fit`` in another thread ends with the state it started with.
Nothing here writes to shared memory: the backbone's hooks and the
embedding buffer are per calling thread, the means and precisions are only
read.
"""

import numpy as np
import torch

from .distances import mahalanobis, mahalanobis_min
from .images import resize
from .maps import image_scores
from .memory import OutOfMemoryHint
from .progress import stage


def iter_maps(state, images, batch_size, *, verbose=False, desc="score"):
    """Yield ``(maps, sizes)``: (B, *image_size) float tensors and the images' own sizes."""
    h, w = state.grid
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


def _image_scores(state, maps):
    return -image_scores(maps, state.image_score).double().cpu().numpy()


def score_samples(state, images, batch_size, verbose=False):
    parts = [_image_scores(state, m) for m, _ in iter_maps(state, images, batch_size, verbose=verbose)]
    return np.concatenate(parts)


def anomaly_map(state, images, batch_size, verbose=False):
    """``(maps, scores)``: maps at each image's own size (stacked if all equal), scores."""
    out, scores = [], []
    for maps, sizes in iter_maps(state, images, batch_size, verbose=verbose, desc="anomaly_map"):
        scores.append(_image_scores(state, maps))
        for m, size in zip(maps, sizes):
            m = resize(m[None, None], size)[0, 0] if tuple(m.shape) != size else m
            out.append(m.cpu().numpy())
    if len({m.shape for m in out}) == 1:
        out = np.stack(out)
    return out, np.concatenate(scores)
