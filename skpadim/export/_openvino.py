"""``to_openvino``: the exported ONNX graph as an OpenVINO IR folder."""

import json
import os

from .._atomic import atomic_directory
from .. import _export_format as fmt


def to_openvino(detector, directory, *, opset=None):
    """Export a fitted detector as an OpenVINO IR folder.

    The folder holds ``model.xml`` and ``model.bin`` (the graph of
    :func:`to_onnx`, converted by OpenVINO with float32 weights: no
    compression to float16) and ``skpadim.json`` (the same metadata as the
    ONNX file, plus the size and SHA-256 of both model files).
    :class:`skpadim.runtime.OpenVinoDetector` (or :func:`skpadim.runtime.load`)
    runs it. OpenVINO also runs the ``.onnx`` file directly
    (``OnnxDetector(path, backend="openvino")``); the IR folder loads faster
    and needs no ONNX parser at the station. The folder is written next to its
    final name and renamed into place; an existing export there is replaced.

    Parameters
    ----------
    detector : PadimDetector
        A fitted detector.
    directory : str or os.PathLike
        The folder to write (created; replaced if it holds an earlier export).
    opset : int, default=None
        ONNX opset of the intermediate graph (see :func:`to_onnx`).

    Returns
    -------
    directory : str
    """
    try:
        import openvino as ov
    except ImportError:
        raise ImportError(
            'to_openvino needs the openvino package; install it with pip install "skpadim[openvino]".'
        ) from None
    from ._onnx import to_onnx

    directory = os.fspath(directory)
    target = os.path.abspath(directory)
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise ValueError(f"The folder '{parent}' (parent of directory '{directory}') does not exist; create it first.")
    if os.path.exists(target) and not _replaceable(target):
        raise ValueError(
            f"The 'directory' parameter of to_openvino is '{directory}', which exists and is not "
            "an earlier OpenVINO export (it holds other files); pass a new or empty folder."
        )
    with atomic_directory(target) as tmp:
        onnx_path = os.path.join(tmp, "graph.onnx")
        to_onnx(detector, onnx_path, opset=opset, external_data_threshold=0)
        config = fmt.read_onnx(onnx_path)
        config["external_data"] = None
        model = ov.convert_model(onnx_path)
        ov.save_model(model, os.path.join(tmp, fmt.IR_FILES[0]), compress_to_fp16=False)
        for name in os.listdir(tmp):
            if name.startswith("graph.onnx"):
                os.unlink(os.path.join(tmp, name))
        files = {}
        for name in fmt.IR_FILES:
            full = os.path.join(tmp, name)
            files[name] = {"size": os.path.getsize(full), "sha256": fmt.sha256_file(full)}
        meta = {"format": fmt.IR_FORMAT, "format_version": fmt.FORMAT_VERSION, "config": config, "files": files}
        with open(os.path.join(tmp, fmt.IR_CONFIG), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
    return directory


def _replaceable(path):
    if not os.path.isdir(path):
        return False
    names = set(os.listdir(path))
    return not names or names <= set(fmt.IR_FILES) | {fmt.IR_CONFIG}
