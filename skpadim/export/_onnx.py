"""``to_onnx``: a fitted detector as one ONNX graph, metadata and (maybe) a side file."""

import contextlib
import hashlib
import io
import json
import numbers
import os
import warnings

import numpy as np

from .._atomic import atomic_file, write_atomic
from .. import _export_format as fmt

DEFAULT_OPSET = 17
MIN_OPSET = 13
# Protobuf cannot serialize one message over 2 GiB; stay clear of it.
MAX_INLINE_BYTES = 2**31 - 2**27
_ALIGN = 1 << 16  # external tensors start at 64 KiB boundaries (memory mapping)
_SMALL = 1024  # tensors below this stay in the .onnx file


def _check_int(name, value, lo, hi):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"The {name!r} parameter of to_onnx must be an int in [{lo}, {hi}]; got {value!r}.")
    return int(value)


def _config(det, facts, n_features, external):
    from .. import __version__

    norm = facts["norm"]
    tiled = facts["tiles"] is not None
    if tiled:
        th, tw = facts["tiles"]["size"]
        graph_input = {"name": fmt.TILES_INPUT, "layout": "NTCHW", "dtype": "float32", "range": [0.0, 1.0],
                       "color": "RGB", "tile_size": [int(th), int(tw)]}
    else:
        graph_input = {"name": fmt.INPUT, "layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0], "color": "RGB"}
    return {
        "skpadim_version": __version__,
        "graph": "tiles" if tiled else "images",
        "offset": float(det.offset_),
        # The localization settings (the runtime's pixel_threshold_ and min_region_area).
        "pixel_threshold": float(det.pixel_threshold_),
        "pixel_anchor": float(det.pixel_anchor_),
        "min_region_area": int(det.min_region_area),
        "image_size": [int(v) for v in facts["image_size"]],
        "normalize": None if norm is None else [list(map(float, norm[0])), list(map(float, norm[1]))],
        "n_channels_in": None if getattr(det, "n_channels_in_", None) is None else int(det.n_channels_in_),
        "n_features": int(n_features),
        "feature_map_shape": [int(v) for v in det.feature_map_shape_],
        "layers": list(det.layers_),
        "backbone": det.backbone if isinstance(det.backbone, str) else type(det.backbone).__name__,
        "n_samples_seen": int(getattr(det, "n_samples_seen_", 0)),
        "sigma": facts["sigma"],
        "epsilon": facts["epsilon"],
        "input": graph_input,
        "outputs": list(fmt.TILES_OUTPUTS if tiled else fmt.OUTPUTS),
        "external_data": external,
        # The parameters as the fit fixed them (PadimDetector.fitted_params_), for the runtime's
        # fitted_params_ and the command line.
        "fitted_params": det.fitted_params_,
    }


def trace(det, opset):
    """The traced graph as an ``onnx.ModelProto`` whose precision is still an input."""
    import onnx
    import torch

    from ._graph import TileGraph, graph_of

    graph = graph_of(det)
    P, d = det.mean_.shape
    precision = torch.zeros(1, 1, 1).expand(P, d, d)  # shape only, no memory
    if isinstance(graph, TileGraph):
        th, tw = graph.tile_size
        example = torch.zeros(2, graph.n_tiles, 3, th, tw)
        names, outputs = [fmt.TILES_INPUT, fmt.PRECISION], list(fmt.TILES_OUTPUTS)
        tiles_axis = {} if graph.per_location else {1: "tiles"}
        axes = {fmt.TILES_INPUT: {0: "batch", **tiles_axis}, outputs[0]: {0: "batch", **tiles_axis}}
    else:
        h, w = graph.image_size
        example = torch.zeros(2, 3, h, w)
        names, outputs = [fmt.INPUT, fmt.PRECISION], list(fmt.OUTPUTS)
        axes = {fmt.INPUT: {0: "batch"}, outputs[0]: {0: "batch"}, outputs[1]: {0: "batch"}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on its own internals
        try:
            torch.onnx.export(
                graph, (example, precision), buf, dynamo=False, opset_version=opset,
                input_names=names, output_names=outputs, dynamic_axes=axes, do_constant_folding=True,
            )
        except Exception as exc:
            raise ValueError(
                f"torch could not export this detector to ONNX at opset {opset}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
    return onnx.load_model_from_string(buf.getvalue())


def _precision_blocks(det, chunk=256):
    """precision_ transposed per position, as float32 bytes, a few positions at a time."""
    prec = det.precision_
    for s in range(0, len(prec), chunk):
        yield np.ascontiguousarray(np.asarray(prec[s : s + chunk], dtype=np.float32).transpose(0, 2, 1)).tobytes()


def _write_side(f, side_name, model, det, precision_tensor):
    """Move the large initializers and the precision into ``f``; return (size, sha256)."""
    from onnx import TensorProto

    h = hashlib.sha256()
    pos = 0

    def put(blocks):
        nonlocal pos
        pad = (-pos) % _ALIGN
        if pad:
            f.write(b"\0" * pad)
            h.update(b"\0" * pad)
            pos += pad
        start = pos
        for block in blocks:
            f.write(block)
            h.update(block)
            pos += len(block)
        return start, pos - start

    def external(tensor, offset, length):
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for k, v in (("location", side_name), ("offset", str(offset)), ("length", str(length))):
            e = tensor.external_data.add()
            e.key, e.value = k, v

    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= _SMALL:
            offset, length = put([tensor.raw_data])
            tensor.ClearField("raw_data")
            external(tensor, offset, length)
    offset, length = put(_precision_blocks(det))
    external(precision_tensor, offset, length)
    return pos, h.hexdigest()


def _finish(model, det, external_threshold):
    """Turn the precision input into an initializer; return (model, needs side file)."""
    from onnx import TensorProto

    graph = model.graph
    inputs = [i for i in graph.input if i.name == fmt.PRECISION]
    graph.input.remove(inputs[0])
    P, d = det.mean_.shape
    tensor = graph.initializer.add()
    tensor.name = fmt.PRECISION
    tensor.data_type = TensorProto.FLOAT
    tensor.dims.extend([P, d, d])
    weights = sum(len(t.raw_data) for t in graph.initializer) + 4 * P * d * d
    return tensor, weights > external_threshold


def to_onnx(detector, path, *, opset=None, external_data_threshold=MAX_INLINE_BYTES):
    """Export a fitted :class:`~skpadim.PadimDetector` to one ONNX graph.

    Every fitted detector exports (tiles in both sharing modes, the native
    size, ``shift_tolerance``, ``neighbourhood``, ``image_score``,
    ``covariance``), but one whose backbone ran in reduced precision
    (``backbone_dtype`` other than float32: the graph runs it in float32, so
    its maps would differ). For an untiled detector the graph takes a
    float32 batch ``images`` of shape (batch, 3, H, W) at the detector's
    ``image_size`` (RGB in [0, 1], any batch size) and returns
    ``anomaly_maps`` (batch, H, W), the maps of
    :meth:`PadimDetector.anomaly_map` before the resize to each image's own
    size, and ``image_scores`` (batch,) (``-score_samples``). Normalization,
    the backbone up to the last tapped layer, the embedding, the Mahalanobis
    distances, the upsampling and the Gaussian smoothing are all in the
    graph. For a tiled detector the graph takes the images' tiles, (batch,
    tiles, 3, th, tw), and returns each tile's distance grid; the runtime
    cuts, stitches, smooths and scores as the detector does (format version
    2). The threshold, ``image_size``, normalization, channel counts,
    ``fitted_params_``, skpadim version and format version are in the
    file's metadata. :class:`skpadim.runtime.OnnxDetector` runs it without
    torch, from the same inputs as ``PadimDetector`` (arrays, lists of
    images of any size, paths), and takes and refuses the same image sizes.

    Parameters
    ----------
    detector : PadimDetector
        A fitted detector.
    path : str or os.PathLike
        The ``.onnx`` file to write (replaced atomically if it exists).
    opset : int, default=None
        ONNX opset version; None means 17 (onnxruntime and OpenVINO read it).
    external_data_threshold : int, default=2**31 - 2**27
        When the weights (backbone and precision matrices) take more bytes
        than this, every tensor of 1 KiB or more goes to one side file,
        ``<path>.data`` (e.g. ``model.onnx.data``), next to the model: ONNX
        files cannot exceed 2 GB. Keep the two files together. 0 forces the
        side file.

    Returns
    -------
    path : str
        The path written.

    Examples
    --------
    >>> import tempfile, os
    >>> from skpadim import PadimDetector
    >>> from skpadim.datasets import make_anomaly_images
    >>> from skpadim.export import to_onnx
    >>> from skpadim.runtime import OnnxDetector
    >>> X, y, _ = make_anomaly_images(12, 2, image_size=64, random_state=0)
    >>> det = PadimDetector(weights=None, image_size=64, n_features=20, random_state=0).fit(X[y == 0])
    >>> path = to_onnx(det, os.path.join(tempfile.mkdtemp(), "model.onnx"))
    >>> onnx_det = OnnxDetector(path)
    >>> bool(abs(onnx_det.score_samples(X) - det.score_samples(X)).max() < 1e-3)
    True
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(detector, "precision_")
    opset = DEFAULT_OPSET if opset is None else _check_int("opset", opset, MIN_OPSET, 30)
    threshold = _check_int("external_data_threshold", external_data_threshold, 0, MAX_INLINE_BYTES)
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"The 'path' parameter of to_onnx is the folder '{path}'; pass a file name such as model.onnx.")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"The folder of path '{path}' does not exist; create '{directory}' first.")
    from ._graph import fitted_facts

    facts = fitted_facts(detector)
    model = trace(detector, opset)
    tensor, external = _finish(model, detector, threshold)
    side_name = fmt.side_file_name(path)
    with contextlib.ExitStack() as stack:
        if external:
            f = stack.enter_context(atomic_file(os.path.join(directory, side_name)))
            size, sha = _write_side(f, side_name, model, detector, tensor)
            side = {"location": side_name, "size": size, "sha256": sha}
        else:
            tensor.raw_data = b"".join(_precision_blocks(detector))
            side = None
        config = _config(detector, facts, detector.mean_.shape[1], side)
        blob = _serialize(model, config)
    # The side file (renamed first, when complete) matches this graph; the graph is
    # renamed last, so a file that loads always has its weights.
    write_atomic(path, lambda f: f.write(blob))
    return path


def _serialize(model, config):
    """Model bytes with the metadata and the SHA-256 of the graph."""
    version = fmt.FORMAT_VERSION if config.get("graph") == "tiles" else fmt.IMAGES_GRAPH_VERSION
    entries = {
        "skpadim.format": fmt.FORMAT,
        "skpadim.format_version": str(version),
        "skpadim.config": json.dumps(config, sort_keys=True),
    }
    del model.metadata_props[:]
    for k, v in entries.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    model.producer_name = "skpadim"
    graph, _ = fmt.graph_and_metadata(memoryview(model.SerializeToString()))
    e = model.metadata_props.add()
    e.key, e.value = "skpadim.graph_sha256", hashlib.sha256(graph).hexdigest()
    blob = model.SerializeToString()
    graph2, meta = fmt.graph_and_metadata(memoryview(blob))
    if hashlib.sha256(graph2).hexdigest() != meta["skpadim.graph_sha256"]:  # pragma: no cover
        raise RuntimeError("The ONNX graph did not serialize deterministically; please report this.")
    return blob
