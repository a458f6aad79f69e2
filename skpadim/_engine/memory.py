"""Memory: a check before fitting, and out-of-memory errors that say what helps.

A fit call builds new statistics next to the detector's current ones, which
stay in use until the call succeeds (see :mod:`skpadim._engine.fitting`):
the running sums and the precision (``P * d * d`` float32 each), the update
buffer and the new calibration images. :func:`check_fit_memory` compares
that with the memory *available* now on the device that holds the
statistics, before any image is processed; a detector already fitted is
already counted as used.

:class:`OutOfMemoryHint` turns torch's out-of-memory errors into a
:class:`~skpadim.exceptions.DeviceOutOfMemoryError` whose advice depends on
where the memory ran out: in a batch of images (a smaller ``batch_size``
helps) or at the end of a fit (it does not: the per-position matrices do
not depend on it).

:func:`resolve_batch_size` turns ``batch_size="auto"`` into images per
batch: :data:`AUTO_BATCH` on a CPU, and on a CUDA GPU the largest power of
two up to :data:`AUTO_BATCH_MAX` whose working memory (:func:`batch_bytes`)
stays within :data:`AUTO_BATCH_SHARE` of the memory available and within
:data:`AUTO_BATCH_BYTES`.
"""

import contextlib
import os
import warnings

import torch

from ..exceptions import DeviceOutOfMemoryError
from .calibration import CAPACITY
from .gaussian import BufferedUpdate

_GIB = 2**30
_OOM_TYPES = tuple(
    {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)} - {None}
)
_CPU_OOM = "can't allocate memory"


def available_bytes(device):
    """Memory that can be allocated now on ``device`` (None: unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


#: ``batch_size="auto"`` on a CPU (and MPS): fit is flat from 8 to 32 images per batch and
#: score_samples fastest at 32 (docs/benchmarks.md, "Batch size").
AUTO_BATCH = 32
#: ``batch_size="auto"`` on a CUDA GPU: at most this many images (tiles) per batch ...
AUTO_BATCH_MAX = 256
#: ... whose estimated working memory takes at most this share of the memory available ...
AUTO_BATCH_SHARE = 0.25
#: ... and at most this many bytes: a large embedding (wide_resnet50_2 / 550 channels at
#: 224 px: 64 images) leaves the device's memory to the statistics, which need it more.
AUTO_BATCH_BYTES = 8 << 30


def batch_bytes(state):
    """Estimated device bytes of one image (one tile, with tiles) while its batch is processed.

    The input (uint8, float, normalized), the tapped layers' outputs times
    eight (a margin for the backbone's intermediate activations: counted
    layer by layer, the tensors alive at once in resnet18 and wide_resnet50_2
    up to layer3 add up to at most about 3.5 times those outputs), the
    embedding three times (the buffer, the centered copy and the product with
    the precision) and the map four times (distances upsampled, smoothed,
    resized, scored).
    """
    layout = state.layout
    H, W = layout.tiling.size if layout.tiling is not None else layout.image_size
    layers = sum(c * h * w for c, h, w in state.spec["shapes"])
    return 4 * (3 * 3 * H * W + 8 * layers + 3 * layout.patches.n_positions * state.shape[1] + 4 * H * W)


def auto_batch_size(device, per_image_bytes, available=None):
    """Images per batch for ``batch_size="auto"`` on ``device`` (see the module docstring);
    ``available``: the free bytes to assume (None: :func:`available_bytes`)."""
    if torch.device(device).type != "cuda":
        return AUTO_BATCH
    available = available_bytes(device) if available is None else available
    budget = min(AUTO_BATCH_SHARE * available, AUTO_BATCH_BYTES)
    fits = int(budget // max(1, per_image_bytes))
    return 1 << (max(1, min(AUTO_BATCH_MAX, fits)).bit_length() - 1)


def resolve_batch_size(batch_size, state):
    """The images (tiles) per batch of a call: ``batch_size`` itself, or for ``"auto"`` the
    :func:`auto_batch_size` of ``state``'s device and :func:`batch_bytes`, read now."""
    if isinstance(batch_size, str):  # "auto" (validated)
        return auto_batch_size(state.device, batch_bytes(state))
    return int(batch_size)


def fit_call_bytes(n_positions, n_features, sample_item_bytes, width=BufferedUpdate.WIDTH):
    """Bytes a fit call allocates for its new statistics (see the module docstring)."""
    P, d = n_positions, n_features
    matrices = 2 * 4 * P * d * d  # running sums + precision, float32
    return matrices + 4 * P * d * width + CAPACITY * sample_item_bytes


def check_fit_memory(n_positions, n_features, sample_item_bytes, device, *, held_bytes=0,
                     width=BufferedUpdate.WIDTH, advice=None):
    """Refuse a fit call that cannot fit in the available memory; warn about later ones.

    ``held_bytes`` is what the detector already holds (0 for a first fit);
    ``width`` the update buffer's images; ``advice`` what helps, if not the default.
    """
    need = fit_call_bytes(n_positions, n_features, sample_item_bytes, width)
    available = available_bytes(device)
    if available is None:
        return
    kind = torch.device(device).type
    what = (
        f"n_features={n_features} with {n_positions} patch positions needs about "
        f"{need / _GIB:.1f} GiB for the per-position covariances and precisions"
        + ("" if advice is None else " and the held-out calibration images")
    )
    fix = (
        "Lower n_features (the paper uses 100 for resnet18 and 550 for "
        "wide_resnet50_2) or image_size, or free memory"
    ) if advice is None else advice
    if need > 0.9 * available:
        if held_bytes:
            raise MemoryError(
                f"{what}, and this {kind} device has {available / _GIB:.1f} GiB available. "
                f"partial_fit keeps the detector's current statistics ({held_bytes / _GIB:.1f} "
                "GiB) in use until the new ones are complete, so it needs both at once. "
                "Save the detector (detector.save(path)) and call partial_fit on it in a "
                "process with more free memory, or free memory here."
            )
        raise MemoryError(f"{what}, more than this {kind} device has available "
                          f"({available / _GIB:.1f} GiB). {fix}.")
    if not held_bytes and 2 * need > 0.9 * available:
        warnings.warn(
            f"{what} ({available / _GIB:.1f} GiB available): this fit fits, but a later "
            "partial_fit on this detector needs as much again while it holds these "
            f"statistics. {fix} if you mean to resume training here.",
            UserWarning,
            stacklevel=4,
        )


def is_out_of_memory(exc):
    if isinstance(exc, _OOM_TYPES):
        return True
    return isinstance(exc, RuntimeError) and _CPU_OOM in str(exc)


class OutOfMemoryHint:
    """Context manager: re-raise out-of-memory errors as DeviceOutOfMemoryError with advice.

    ``stage`` says where the work is: ``"batch"`` (a batch of images through
    the backbone, the embedding, the distances or the maps) or ``"end"``
    (the end of a fit: precision and calibration). ``batch_size`` is the
    parameter; set the attribute to the images per batch once they are known.
    """

    def __init__(self, device, batch_size, image_size, n_features):
        self.device, self.batch_size = device, batch_size
        self.image_size, self.n_features = image_size, n_features
        self.stage = "batch"

    @contextlib.contextmanager
    def at(self, stage):
        previous, self.stage = self.stage, stage
        yield  # on an exception the stage stays, for __exit__ to read
        self.stage = previous

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not is_out_of_memory(exc):
            return False
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if self.stage == "end":
            elsewhere = "" if torch.device(self.device).type == "cpu" else (
                ", or fit on the CPU (device='cpu'), which uses the machine's RAM"
            )
            advice = (
                f"at the end of fit, while forming the per-position covariances and precisions "
                f"(n_features={self.n_features}, image_size={self.image_size!r}). batch_size "
                f"does not change this memory; lower n_features or image_size{elsewhere}."
            )
        else:
            auto = isinstance(self.batch_size, str)  # "auto", not yet resolved
            batch = 2 * AUTO_BATCH if auto else int(self.batch_size)
            advice = (
                f"while processing a batch of batch_size={self.batch_size if auto else batch!r} images "
                f"(image_size={self.image_size!r}, n_features={self.n_features}). Use a "
                f"smaller batch_size, e.g. batch_size={max(1, batch // 2)}; if even "
                "batch_size=1 fails, lower image_size or n_features."
            )
        raise DeviceOutOfMemoryError(f"Out of memory on {self.device} {advice} ({first})") from exc
