"""Which kind of model a path holds, and which loader reads it (torch-free).

Two kinds of model files travel between machines: the file of
:meth:`PadimDetector.save <skpadim.PadimDetector.save>` (and ``skpadim
fit``), a zip archive that needs torch, and the exports of
:mod:`skpadim.export` (an ``.onnx`` file, or an OpenVINO IR folder), which
:mod:`skpadim.runtime` runs without torch. The command line takes both; each
Python loader refuses the other kind with :func:`wrong_loader`'s words,
which name the loader to use instead.

Examples
--------
>>> import os, tempfile, zipfile
>>> from skpadim._model_kind import model_kind
>>> folder = tempfile.mkdtemp()
>>> path = os.path.join(folder, "model.skpadim")
>>> with zipfile.ZipFile(path, "w") as zf:
...     zf.writestr("config.json", "{}")
>>> model_kind(path)
'saved'
>>> model_kind(folder) is None
True
"""

import os

__all__ = ["EXPORTED", "ONNX", "OPENVINO", "SAVED", "model_kind", "wrong_loader"]

SAVED = "saved"  # PadimDetector.save, skpadim fit
ONNX = "onnx"  # skpadim.export.to_onnx, skpadim export
OPENVINO = "openvino"  # skpadim.export.to_openvino, skpadim export --format openvino
EXPORTED = (ONNX, OPENVINO)

_ZIP_MAGIC = b"PK\x03\x04"
_SAVED_CONFIG = "config.json"
# A serialized onnx.ModelProto starts with its field 1, ir_version, a varint: tag byte 0x08.
_ONNX_FIRST_BYTE = b"\x08"
_IR_FILES = ("skpadim.json", "model.xml")


def model_kind(path):
    """``"saved"``, ``"onnx"``, ``"openvino"``, or None (missing, unreadable, or neither).

    Decided by the first bytes of a file (a zip archive with a
    ``config.json`` is a saved detector; an ONNX file starts with its IR
    version) or, for a folder, by an IR file in it; a file named ``*.onnx``
    counts as ONNX whatever it holds, so that the runtime's checks name what
    is wrong with it.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return OPENVINO if any(os.path.isfile(os.path.join(path, n)) for n in _IR_FILES) else None
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head == _ZIP_MAGIC:
        return SAVED if _has_config(path) else None
    if path.lower().endswith(".onnx") or head[:1] == _ONNX_FIRST_BYTE:
        return ONNX
    return None


def _has_config(path):
    """Whether the zip archive at ``path`` holds the config of PadimDetector.save (its central
    directory only is read)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return _SAVED_CONFIG in zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def wrong_loader(path, kind):
    """Why a loader refuses ``path`` of ``kind``, and which one reads it (a sentence or two)."""
    path = os.fspath(path)
    if kind == SAVED:
        return (
            f"'{path}' is a model file of PadimDetector.save (skpadim fit), not an export: load "
            "it with PadimDetector.load where torch is installed, or export it there for this "
            f"runtime (skpadim export {path} --out model.onnx); the command line reads either "
            "kind (skpadim predict MODEL IMAGES...)."
        )
    what = "an ONNX export" if kind == ONNX else "an OpenVINO export folder"
    return (
        f"'{path}' is {what} (skpadim export), not a file of PadimDetector.save: run it with "
        f"skpadim.runtime.load({path!r}), which needs no torch; the command line reads either "
        "kind (skpadim predict MODEL IMAGES...)."
    )
