"""Exceptions raised by skpadim, importable without torch.

Examples
--------
>>> from skpadim.exceptions import WeightsUnavailableError
>>> issubclass(WeightsUnavailableError, RuntimeError)
True
"""

__all__ = ["DeviceOutOfMemoryError", "WeightsUnavailableError"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither in the local cache nor downloadable.

    The message says where torchvision looks for the file and the three ways
    to fix it (copy the file into the cache, pass a state_dict path, or use
    random weights for tests).
    """


class DeviceOutOfMemoryError(MemoryError):
    """The accelerator ran out of memory while processing a batch of images.

    The message names the batch size, image size and feature count in use and
    which of them to lower.
    """
