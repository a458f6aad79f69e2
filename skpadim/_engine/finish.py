"""The end of a fit: from the running statistics to the Gaussians and the threshold.

One end for every path: ``fit``, ``partial_fit``, a fit resumed after a
load, and the cluster fit of :mod:`skpadim.distributed` all call
:func:`finish`, so an option of the end of a fit is wired once. It works on
the statistics and the calibration sample alone, never the backbone:

1. :func:`finish_positions`, for a range of patch positions: the precision
   matrices of their Gaussians (``epsilon``, ``covariance``), and the
   squared distances of the held-out calibration images' patches to them,
   each image left out of the statistics first, one array per step of the
   ``shift_tolerance`` window. In one process it runs on every position at
   once; a cluster runs it on blocks of positions, on the workers, and
   hands the blocks to :func:`finish`.
2. :func:`finish`: the means, the smallest distance of each patch over the
   window, the held-out images' maps (``sigma``, tiles stitched) and image
   scores (``image_score``), the offset (``contamination``) and, from the
   same maps, the label-free pixel threshold (:mod:`skpadim._regions`).
"""

from typing import NamedTuple, Union

import numpy as np

from .._regions import fit_pixel_threshold
from .calibration import n_held_out, offset_for
from .maps import image_scores
from .progress import stage
from .shifts import offsets, to_patches
from .transfer import is_staged


class FitOptions(NamedTuple):
    """The parameters the end of a fit uses (the embedding is fixed at the first call)."""

    epsilon: float
    sigma: float
    contamination: Union[str, float]
    image_score: Union[str, float]
    shift_tolerance: int
    covariance: str

    @classmethod
    def of(cls, params):
        """From validated PadimDetector parameters."""
        c, s = params.contamination, params.image_score
        return cls(float(params.epsilon), float(params.sigma), c if isinstance(c, str) else float(c),
                   s if s == "max" else float(s), int(params.shift_tolerance), params.covariance)


def held_out_embedding(layout, sample, n, device):
    """``(emb, held_out)``: the embeddings (P, d, k) of the calibration images that a fit
    of ``n`` images holds out (one image: that image, scored in sample)."""
    held_out = n >= 2
    items = sample.held_out(n)[0] if held_out else sample.items[:1]
    return layout.embed_kept(items).to(device), held_out


def finish_positions(stats, emb, options, grid, first=0, *, held_out=True, host=None):
    """``(precision, squared)`` for the Gaussians of ``stats``, the statistics of the
    positions ``first:first + len`` of the patch grid (all of them in one process, a
    block of them on a cluster worker).

    ``precision``: (len, d, d) float32 (also copied into the numpy array
    ``host``, if given, as it is computed); ``squared``: one (len, k) float64
    tensor per step of the shift window (:mod:`.shifts`), the squared
    distances of the held-out patches ``emb`` (every position's, as
    :func:`held_out_embedding` gives them) to these Gaussians.
    """
    with stage("precision"):
        precision = stats.precision(options.epsilon, covariance=options.covariance, host=host)
    with stage("calibration"):
        squared = stats.squared_distances(
            emb, options.epsilon, held_out=held_out, radius=options.shift_tolerance, grid=grid,
            first=first, covariance=options.covariance)
    return precision, squared


def finish(state, stats, sample, rng, options, finished=None):
    """The fitted state of the images of ``stats`` and ``sample`` (``state``'s embedding).

    ``finished``: the ``(precision, squared)`` of every position, already
    computed by :func:`finish_positions` elsewhere (the blocks of a cluster
    fit, put together); None computes them here.
    """
    new = state.replaced(stats, sample, rng)
    layout = new.layout
    host = None  # on a GPU, the precisions' numpy array, filled while they are computed
    if finished is None:
        emb, held_out = held_out_embedding(layout, sample, new.n, stats.outer.device)
        if is_staged(stats.outer.device):
            host = np.empty(tuple(stats.outer.shape), np.float32)
        finished = finish_positions(stats, emb, options, layout.grid, held_out=held_out, host=host)
    precision, squared = finished
    with stage("calibration"):
        radius = options.shift_tolerance
        dist = squared[0] if radius == 0 else to_patches(squared, layout.grid, offsets(radius))
        dist = dist.sqrt().T.float().to(new.device)  # (k, P)
        maps = layout.maps(dist, options.sigma)
        calibration = -image_scores(maps, options.image_score).double().cpu().numpy()
        if len(calibration) != max(1, n_held_out(new.n)):
            raise RuntimeError(f"{len(calibration)} calibration scores for {new.n} images")
        offset = offset_for(calibration, options.contamination)
        peaks = maps.amax(dim=(1, 2)).cpu().numpy()  # float32 on every device (mps has no float64)
        pixel_threshold = fit_pixel_threshold(peaks)
    new.set_fitted(options, stats.mean(), precision, calibration, offset, pixel_threshold, host)
    return new
