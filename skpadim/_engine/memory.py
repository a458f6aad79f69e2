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
    (the end of a fit: precision and calibration).
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
            advice = (
                f"while processing a batch of batch_size={self.batch_size} images "
                f"(image_size={self.image_size!r}, n_features={self.n_features}). Use a "
                f"smaller batch_size, e.g. batch_size={max(1, self.batch_size // 2)}; if even "
                "batch_size=1 fails, lower image_size or n_features."
            )
        raise DeviceOutOfMemoryError(f"Out of memory on {self.device} {advice} ({first})") from exc
