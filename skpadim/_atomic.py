"""Files and folders that are complete or absent: the one atomic writer of skpadim.

Everything skpadim writes (model files, exports, the command line's CSV,
pictures and reports) goes to a hidden temporary name next to its final
name (``.NAME.XXXX.tmp``, same folder, so the rename cannot cross file
systems) and is renamed over the final name once complete. An error or an
interrupt (KeyboardInterrupt included) removes the temporary file and
leaves any earlier file of that name as it was. Torch-free: the command
line and the deployment runtime use it too.

Examples
--------
>>> import os, tempfile
>>> from skpadim._atomic import atomic_file, write_bytes
>>> path = os.path.join(tempfile.mkdtemp(), "out.txt")
>>> write_bytes(path, b"first")
>>> try:
...     with atomic_file(path) as f:
...         _ = f.write(b"half-writ")
...         raise RuntimeError("stopped")
... except RuntimeError:
...     pass
>>> open(path, "rb").read(), sorted(os.listdir(os.path.dirname(path)))
(b'first', ['out.txt'])
"""

import contextlib
import os
import shutil
import tempfile

__all__ = ["atomic_directory", "atomic_file", "temporary", "sync_directory", "write_atomic",
           "write_bytes", "write_text"]


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary(path):
    """``(fd, name)`` of a new hidden file next to ``path``, with the mode ``open`` would give."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.chmod(tmp, 0o666 & ~_umask())  # not mkstemp's 0600
    return fd, tmp


def sync_directory(path):
    """Make a rename into ``path``'s folder durable (POSIX; a no-op where it cannot be done)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path, *, durable=True):
    """A binary file object whose contents replace ``path`` when the block ends without error.

    ``durable=True`` flushes the data to disk before the rename and the
    rename itself after it (model files, CSVs); ``False`` relies on the
    rename alone (pictures that can be made again).
    """
    path = os.fspath(path)
    fd, tmp = temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        sync_directory(path)


def write_atomic(path, write, *, durable=True):
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    with atomic_file(path, durable=durable) as f:
        write(f)


def write_bytes(path, data, *, durable=False):
    """``data`` to ``path`` atomically (by default without fsync: the rename is enough)."""
    with atomic_file(path, durable=durable) as f:
        f.write(data)


def write_text(path, text, *, durable=True):
    """``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"), durable=durable)


def _fsync_tree(folder):
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if os.path.isfile(full):
            with open(full, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_directory(path):
    """A new temporary folder whose contents replace the folder ``path`` when the block ends
    without error (an earlier folder of that name is moved aside, then removed)."""
    target = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(target)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sync_directory(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
