"""The exported-model file format: names, versions and integrity checks.

Shared by :mod:`skpadim.export` (which writes files) and
:mod:`skpadim.runtime` (which reads them); imports neither torch nor onnx.

An ONNX export is one ``.onnx`` file, plus, for models whose weights pass the
external-data threshold (2 GB by default, ONNX's limit for one file), one
side file named after it with ``.data`` appended (``model.onnx`` ->
``model.onnx.data``) in the same folder. The model's ``metadata_props`` hold

* ``skpadim.format``: ``"skpadim-onnx"``;
* ``skpadim.format_version``: an integer: 1 for the graph of untiled
  detectors (images in, maps and scores out), 2 for that of tiled ones
  (tiles in, their distance grids out: ``"graph": "tiles"`` in the config);
* ``skpadim.config``: JSON with the skpadim version, the threshold
  (``offset_``), the levels of the defect masks (``pixel_threshold_``,
  ``pixel_anchor_``) and ``min_region_area``, ``image_size``, the normalization, the input channel
  count, the channel count of the embedding, the layers, ``sigma``,
  ``epsilon``, the input and output names, the detector's
  ``fitted_params_`` (tiles, native size, ``image_score``...), and, when
  there is a side file, its name, size and SHA-256;
* ``skpadim.graph_sha256``: the SHA-256 of the serialized graph (the
  ``graph`` field of the ``ModelProto``), which catches a truncated or
  damaged file before onnxruntime reads it.

The file is read here with a minimal protobuf reader (the top-level fields
of ``ModelProto`` and the key/value pairs of ``metadata_props``), so the
runtime needs neither the ``onnx`` package nor torch.
"""

import hashlib
import json
import os

from ._install import extra
from ._model_kind import SAVED, model_kind, wrong_loader

FORMAT = "skpadim-onnx"
# Version 2: the tiled graph (tiles in, each tile's distance grid out; the runtime stitches).
# Untiled graphs are written as version 1, which earlier runtimes read.
FORMAT_VERSION = 2
IMAGES_GRAPH_VERSION = 1
IR_FORMAT = "skpadim-openvino"
IR_FILES = ("model.xml", "model.bin")
IR_CONFIG = "skpadim.json"
INPUT = "images"
OUTPUTS = ("anomaly_maps", "image_scores")
TILES_INPUT = "tiles"
TILES_OUTPUTS = ("tile_distances",)
PRECISION = "precision_t"
SIDE_SUFFIX = ".data"

_GRAPH_FIELD = 7  # ModelProto.graph
_METADATA_FIELD = 14  # ModelProto.metadata_props


class FormatError(ValueError):
    """The file is not a valid skpadim export (the message says why and what to do)."""


def side_file_name(path):
    """The external-data file of the ONNX file ``path``: ``<name>.data``, same folder."""
    return os.path.basename(os.fspath(path)) + SIDE_SUFFIX


def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise EOFError
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf, start=0, end=None):
    """Yield ``(number, start, end)`` of the length-delimited fields of a message.

    Other wire types are skipped; a field that runs past the end raises
    EOFError (a truncated message).
    """
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise EOFError
            yield number, pos, pos + n
            pos += n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise EOFError


def graph_and_metadata(buf):
    """``(graph bytes or None, {key: value})`` of a serialized ``ModelProto``."""
    graph, meta = None, {}
    for number, a, b in fields(buf):
        if number == _GRAPH_FIELD:
            graph = buf[a:b]
        elif number == _METADATA_FIELD:
            entry = {n: bytes(buf[x:y]).decode("utf-8") for n, x, y in fields(buf, a, b)}
            meta[entry.get(1, "")] = entry.get(2, "")
    return graph, meta


def sha256_file(path, chunk=1 << 24):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def check_header(path, meta):
    """Parse and check the format keys of ``meta``; return the config dict."""
    from . import __version__

    if meta.get("skpadim.format") != FORMAT:
        raise FormatError(
            f"'{path}' is an ONNX model but not a skpadim export (no skpadim.format "
            "metadata); export a fitted detector with skpadim.export.to_onnx or "
            "skpadim export MODEL --out FILE."
        )
    try:
        version = int(meta.get("skpadim.format_version", ""))
    except ValueError:
        raise FormatError(f"'{path}' has an invalid skpadim.format_version.") from None
    if version > FORMAT_VERSION:
        raise FormatError(
            f"'{path}' was exported in skpadim export format version {version}, and this "
            f"skpadim ({__version__}) reads versions up to {FORMAT_VERSION}. Upgrade "
            f"skpadim on this machine ({extra('runtime', upgrade=True)}) or export the "
            "model with the skpadim version installed here."
        )
    try:
        config = json.loads(meta.get("skpadim.config", ""))
    except json.JSONDecodeError as exc:
        raise FormatError(f"'{path}': the skpadim.config metadata is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise FormatError(f"'{path}': the skpadim.config metadata is not a JSON object.")
    return config


def refuse_saved(path):
    """A :class:`FormatError` naming the right loader for a file of ``PadimDetector.save``."""
    if model_kind(path) == SAVED:
        raise FormatError(wrong_loader(path, SAVED))


def read_onnx(path):
    """Check the ONNX export at ``path`` and return its config dict.

    Raises :class:`FormatError` for a file that is not a skpadim export, a
    newer format version, a truncated or damaged file, and a side file that is
    missing or does not match.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FormatError(f"'{path}' is a folder; pass the .onnx file (an OpenVINO export is read with skpadim.runtime.load).")
    refuse_saved(path)
    with open(path, "rb") as f:  # FileNotFoundError names the file
        buf = memoryview(f.read())
    try:
        graph, meta = graph_and_metadata(buf)
    except (EOFError, ValueError, UnicodeDecodeError):
        raise FormatError(
            f"Cannot read '{path}': it is not an ONNX model, or it is truncated or damaged. "
            "Export it again (skpadim export MODEL --out FILE)."
        ) from None
    if graph is None or not meta:
        raise FormatError(
            f"'{path}' is not a skpadim export: it has no ONNX graph or no metadata (a "
            "truncated file, or not an ONNX model at all)."
        )
    config = check_header(path, meta)
    if hashlib.sha256(graph).hexdigest() != meta.get("skpadim.graph_sha256"):
        raise FormatError(
            f"'{path}' is damaged: its graph does not match the SHA-256 recorded at export "
            "(a truncated copy, or the file was modified). Copy or export it again."
        )
    side = config.get("external_data")
    if side is not None:
        _check_side_file(path, side)
    return config


def _check_side_file(path, side):
    name = side.get("location", "")
    if os.path.basename(name) != name or not name:
        raise FormatError(f"'{path}' names an invalid external-data file {name!r}.")
    full = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    if not os.path.isfile(full):
        raise FormatError(
            f"'{path}' keeps its weights in the external-data file '{name}', which is "
            f"missing: copy '{name}' into the same folder as '{os.path.basename(path)}' "
            "(the two files travel together)."
        )
    size = os.path.getsize(full)
    if size != side.get("size"):
        raise FormatError(
            f"The external-data file '{full}' has {size} bytes, but '{path}' was exported "
            f"with one of {side.get('size')} bytes (a truncated copy, or the side file of "
            "another export). Copy both files again."
        )
    if sha256_file(full) != side.get("sha256"):
        raise FormatError(
            f"The external-data file '{full}' does not match the SHA-256 recorded in "
            f"'{path}' (damaged, or the side file of another export). Copy both files again."
        )
