"""Exceptions raised by skpadim, importable without torch.

Examples
--------
>>> from skpadim.exceptions import WeightsUnavailableError
>>> issubclass(WeightsUnavailableError, RuntimeError)
True
"""

__all__ = ["DeviceOutOfMemoryError", "UnreadableImageError", "WeightsUnavailableError"]


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


class UnreadableImageError(ValueError):
    """An image file cannot be opened or decoded.

    Raised for a file that is missing, cannot be opened (permissions, a
    dangling link...), is empty, is not an image, is truncated or corrupt,
    or holds pixels skpadim does not read (16-bit, float). A ValueError, like
    every input error; the message names the file and what to do.

    Parameters
    ----------
    message : str
        The full message.
    path : str, default=None
        The file.
    reason : str, default=None
        What is wrong with it, in a few words (e.g. ``"empty file (0 bytes)"``,
        ``"Permission denied"``, ``"image file is truncated (3 bytes not
        processed)"``): what a report lists next to the path.

    Examples
    --------
    >>> from skpadim.exceptions import UnreadableImageError
    >>> err = UnreadableImageError("could not read 'a.png': empty file (0 bytes)",
    ...                            path="a.png", reason="empty file (0 bytes)")
    >>> isinstance(err, ValueError), err.path, err.reason
    (True, 'a.png', 'empty file (0 bytes)')
    """

    def __init__(self, message, *, path=None, reason=None):
        super().__init__(message)
        self.path = path
        self.reason = reason
