"""Distributed fit: partitions on the workers, then a tree reduction by blocks of positions.

A cluster fit is the one-process fit (:func:`skpadim._engine.fitting.fit`)
with another :class:`~skpadim._engine.fitting.Runner`: the same validation,
the same embedding chosen on the client, the same end of fit
(:mod:`skpadim._engine.finish`), of which the workers run the part per
position by blocks. Every option of the estimator is therefore an option
here too.
"""

import math
import numbers
import uuid
from types import SimpleNamespace

import cloudpickle
import dask
import torch
from distributed import as_completed

from .._engine import fitting
from .._engine.gaussian import GaussianStats
from .._engine.images import ImageSet
from .._engine.persist import model_weights
from .._engine.state import stats_device
from . import _worker
from ._client import get_client, image_paths, partition_bounds

# Statistics larger than this (float32 sums of outer products) are split into
# blocks of patch positions of about this size, each reduced and factorized
# by its own tasks (wide_resnet50_2 / 550 channels at 224 px: 3.8 GB, 15 blocks).
BLOCK_BYTES = 256 << 20


def position_bounds(n_positions, n_features, position_blocks="auto", n_threads=1):
    """``[(a, b)]``: the blocks of patch positions, consecutive and about equal.

    ``"auto"``: blocks of at most ``BLOCK_BYTES`` of sums, and at least one
    per worker thread (``n_threads``), so that the end-of-fit factorization
    keeps every worker busy.

    Examples
    --------
    >>> position_bounds(3136, 100)
    [(0, 3136)]
    >>> position_bounds(3136, 100, n_threads=2)
    [(0, 1568), (1568, 3136)]
    >>> len(position_bounds(3136, 550))
    15
    >>> position_bounds(10, 4, position_blocks=3)
    [(0, 3), (3, 7), (7, 10)]
    """
    if isinstance(position_blocks, str) and position_blocks == "auto":
        count = max(math.ceil(4 * n_positions * n_features**2 / BLOCK_BYTES), n_threads)
    elif (isinstance(position_blocks, numbers.Integral) and not isinstance(position_blocks, bool)
          and position_blocks >= 1):
        count = int(position_blocks)
    else:
        raise ValueError(
            f"The 'position_blocks' parameter must be 'auto' or an int >= 1, got {position_blocks!r}."
        )
    count = max(1, min(count, n_positions))
    edges = [round(i * n_positions / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def tree(leaves, merge, split_every):
    """Reduce ``leaves`` in order with ``merge(level, j, group)``, ``split_every`` at a time.

    Examples
    --------
    >>> tree(list("abcde"), lambda level, j, g: "(" + "".join(g) + ")", 2)
    '(((ab)(cd))e)'
    """
    level = 0
    while len(leaves) > 1:
        level += 1
        groups = [leaves[i : i + split_every] for i in range(0, len(leaves), split_every)]
        leaves = [merge(level, j, g) if len(g) > 1 else g[0] for j, g in enumerate(groups)]
    return leaves[0]


def fit(detector, X, *, client=None, partition_size=None, split_every=4, position_blocks="auto"):
    """Fit ``detector`` on a Dask cluster, as ``detector.fit(X)`` would in one process.

    The client builds the backbone and draws the channel subset and every
    image's calibration key from the detector's generator, exactly as
    ``fit`` does. Each worker rebuilds the backbone from the weights sent
    once (``device="auto"`` picks each worker's own GPU; a backbone given as
    a module travels pickled, so its class must be importable there or
    defined in the calling script) and streams its partitions of ``X`` into
    running sums. The sums are merged on the workers by a tree reduction
    (``split_every`` at a time, in input order), split by blocks of patch
    positions; the workers also form the precisions and the held-out
    calibration distances of their blocks, from the statistics alone (the
    end of fit of :meth:`PadimDetector.fit`, run by blocks). The client
    receives the final arrays and finishes the fit as ``fit`` does.

    Every parameter of the detector works as in one process (tiles in both
    sharing modes, ``image_size=None``, ``covariance``, ``shift_tolerance``,
    ``neighbourhood``, ``image_score``, ``backbone_dtype``). The result does
    not depend on the partitioning: the statistics equal a one-process fit's
    to float round-off, and the calibration images are the very same (the
    keys are drawn per image in input order, and the smallest keys of a
    union are the smallest of each part's smallest), so ``offset_`` agrees
    too, and a later ``partial_fit`` continues as after ``fit``.

    Parameters
    ----------
    detector : PadimDetector
        Its parameters define the model; it is fitted in place. If the fit
        fails, it is left unfitted, as after a failed ``fit``.
    X : list of str or os.PathLike, or dask.bag.Bag of them
        Paths of normal images that every worker can read (e.g. on a shared
        filesystem). The client does not read them (with ``image_size=None``,
        one worker reads the size of the first).
    client : distributed.Client, default=None
        ``None`` uses ``distributed.default_client()``.
    partition_size : int, default=None
        Images per task. ``None``: about two partitions per worker thread,
        at least 64 images each.
    split_every : int, default=4
        Partial results merged per task of the tree reduction.
    position_blocks : 'auto' or int, default='auto'
        Blocks of patch positions that the reduction and the factorization
        are split into. ``'auto'``: at most 256 MB of float32 sums each, and
        at least one per worker thread (resnet18 / 100 channels at 224 px:
        125 MB in all; wide_resnet50_2 / 550: 3.8 GB, 15 blocks).

    Returns
    -------
    detector : PadimDetector
        The fitted detector, an ordinary one (picklable, ``save``-able,
        usable without Dask).

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from distributed import Client, LocalCluster
    >>> from skpadim import PadimDetector
    >>> from skpadim import distributed as skd
    >>> from skpadim.datasets import make_anomaly_images
    >>> X, y, _ = make_anomaly_images(12, 0, image_size=32, random_state=0)
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, f"{i}.png") for i in range(len(X))]
    >>> for img, path in zip(X, paths):
    ...     Image.fromarray(img).save(path)
    >>> cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
    ...                        dashboard_address=":0")
    >>> client = Client(cluster)
    >>> det = PadimDetector(weights=None, image_size=32, n_features=10, random_state=0)
    >>> det = skd.fit(det, paths, client=client, partition_size=4)
    >>> det.n_samples_seen_, det.mean_.shape
    (12, (64, 10))
    >>> skd.score_samples(det, paths[:3], client=client).shape
    (3,)
    >>> client.close(); cluster.close()
    """
    client = get_client(client)
    if not (isinstance(split_every, numbers.Integral) and not isinstance(split_every, bool)
            and split_every >= 2):
        raise ValueError(f"The 'split_every' parameter must be an int >= 2, got {split_every!r}.")
    position_bounds(1, 1, position_blocks)  # validate before any work
    paths = image_paths(X)
    parts = partition_bounds(len(paths), partition_size, client)
    runner = _ClusterRunner(client, paths, parts, split_every, position_blocks)
    return fitting.fit(detector, paths, reset=True, runner=runner)


class _ClusterRunner(fitting.Runner):
    """A fit call's statistics from the workers of a Dask cluster (see :func:`fit`)."""

    resumes = False

    def __init__(self, client, paths, parts, split_every, position_blocks):
        self.client, self.paths, self.parts = client, paths, parts
        self.split_every, self.position_blocks = split_every, position_blocks

    def images(self, X):
        # The client reads no image: the paths are the workers' (channels: from the files).
        return ImageSet(items=list(self.paths), n_channels=None)

    def first_size(self, images):
        return tuple(self.client.submit(_worker.image_size, self.paths[0], pure=False).result())

    def statistics(self, state, images, params, draw, options, hint):
        client, paths = self.client, self.paths
        keys = draw(len(paths))  # as fit draws them, batch after batch, in input order
        P, d = state.shape
        bounds = position_bounds(P, d, self.position_blocks, n_threads=sum(client.nthreads().values()))
        module = params.backbone if isinstance(params.backbone, torch.nn.Module) else None
        model = {
            "token": uuid.uuid4().hex, "spec": state.spec, "feature_index": state.feature_index,
            "weights": model_weights(state.embedder.model),
            # Pickled here: Dask's own serialization of modules loses what hooks need.
            "module": None if module is None else cloudpickle.dumps(module),
            "device": params.device, "batch_size": params.batch_size, "image_size": params.image_size,
        }
        [model_f] = client.scatter([model], broadcast=True, hash=False)
        futures = []
        try:
            sample, finals = _graph(model_f, paths, self.parts, keys, bounds, options,
                                    self.split_every, f"skpadim-fit-{model['token'][:12]}")
            futures = client.compute([sample] + finals, optimize_graph=False)
            blocks = _collect(futures[1:], bounds, P, d)
            sample = futures[0].result()
        finally:  # on an error, the tasks nobody wants any more are cancelled
            for fut in futures:
                fut.release()
            model_f.release()
        device = state.device
        stats = GaussianStats(blocks.n, blocks.shift, blocks.total, blocks.outer).to(stats_device(device))
        finished = (blocks.precision.to(device), [s.to(stats.outer.device) for s in blocks.squared])
        return stats, _worker.to_sample(sample, device), finished


def _graph(model_f, paths, parts, keys, bounds, options, split_every, name):
    """Delayed tasks: the merged calibration sample, and one final task per block."""
    delayed = dask.delayed
    partials = [
        delayed(_worker.fit_partition)(model_f, paths[a:b], keys[a:b], bounds,
                                       dask_key_name=(f"{name}-partition", k))
        for k, (a, b) in enumerate(parts)
    ]
    samples = [delayed(_worker.pick)(p, "sample", dask_key_name=(f"{name}-sample", k))
               for k, p in enumerate(partials)]
    sample = tree(samples, lambda level, j, group: delayed(_worker.merge_samples)(
        *group, dask_key_name=(f"{name}-merge-sample", level, j)), split_every)
    finals = []
    for b, (lo, hi) in enumerate(bounds):
        blocks = [delayed(_worker.pick)(p, "blocks", b, dask_key_name=(f"{name}-block", b, k))
                  for k, p in enumerate(partials)]
        root = tree(blocks, lambda level, j, group: delayed(_worker.merge_blocks)(
            *group, dask_key_name=(f"{name}-merge", b, level, j)), split_every)
        finals.append(delayed(_worker.finish_block)(
            model_f, root, sample, tuple(options), lo, dask_key_name=(f"{name}-final", b)))
    return sample, finals


def _collect(finals, bounds, P, d):
    """The final arrays, each block copied in as it arrives and then let go."""
    out = SimpleNamespace(n=None, shift=torch.empty(P, d), total=torch.empty(P, d, dtype=torch.float64),
                          outer=torch.empty(P, d, d), precision=torch.empty(P, d, d), squared=None)
    where = {fut.key: bounds[b] for b, fut in enumerate(finals)}
    for fut in as_completed(finals, loop=finals[0].client.loop):
        block = fut.result()
        a, b = where[fut.key]
        out.n = block["n"]
        out.shift[a:b] = torch.from_numpy(block["shift"])
        out.total[a:b] = torch.from_numpy(block["total"])
        out.outer[a:b] = torch.from_numpy(block["outer"])
        out.precision[a:b] = torch.from_numpy(block["precision"])
        squared = block["squared"]  # (steps, b - a, k)
        if out.squared is None:
            out.squared = torch.empty(squared.shape[0], P, squared.shape[2], dtype=torch.float64)
        out.squared[:, a:b] = torch.from_numpy(squared)
        fut.release()
        del block
    out.squared = list(out.squared)
    return out
