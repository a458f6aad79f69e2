"""``quantize_int8``: an INT8 variant of an ONNX export (an option, never the default)."""

import os
import tempfile



def _smoothing_conv(node, shapes):
    # The Gaussian smoothing: 1 x 1 x 1 x k and 1 x 1 x k x 1 kernels.
    dims = shapes.get(node.input[1]) if len(node.input) > 1 else None
    return dims is not None and len(dims) == 4 and dims[0] == dims[1] == 1 and 1 in dims[2:]


def _grouped_conv(node):
    # Depthwise and other grouped convolutions (EfficientNet, MobileNet).
    return any(a.name == "group" and a.i > 1 for a in node.attribute)


def quantize_int8(path, out, calibration_images, *, batch_size=8):
    """Write an INT8 copy of the ONNX export ``path`` to ``out``.

    Only the backbone's dense convolutions are quantized (onnxruntime's
    static post-training quantization, QDQ format: int8 weights per output
    channel, uint8 activations calibrated by their min/max on
    ``calibration_images``); grouped (depthwise) convolutions stay float32:
    quantizing them cost EfficientNet-Lite0 another 0.02 to 0.035 of image
    AUROC on Magnetic Tile, for no measurable speed.
    Everything after the backbone stays float32: the per-position means and
    precision matrices, the Mahalanobis distances, the upsampling and the
    smoothing, so the Gaussian model is exactly the fitted one; what changes
    is the features it is given. Scores are not exact: measure the metrics
    on your own test images before deploying it (docs/deploy.md has the
    numbers on Magnetic Tile). ``offset_`` is kept; the file's metadata
    records the quantization. Both onnxruntime and OpenVINO run the result.

    Parameters
    ----------
    path : str or os.PathLike
        An export of :func:`to_onnx` without a side file.
    out : str or os.PathLike
        The file to write (atomically).
    calibration_images : array, list of images or list of paths
        Good images like the training ones (a few hundred is plenty).
    batch_size : int, default=8
        Images per calibration run.

    Returns
    -------
    out : str
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from .._atomic import write_atomic
    from ..runtime import OnnxDetector
    from ._onnx import _serialize

    src = OnnxDetector(path, batch_size=batch_size)
    if src.config_.get("external_data"):
        raise ValueError(
            f"'{path}' keeps its weights in a side file (over 2 GB); quantize_int8 handles "
            "models of one file only."
        )
    if src.config_.get("quantized"):
        raise ValueError(f"'{path}' is already quantized ({src.config_['quantized']}); pass the float32 export.")
    out = os.fspath(out)
    batches = src._batches(calibration_images)

    class Reader(CalibrationDataReader):
        n = 0

        def get_next(self):
            batch = next(batches, None)
            if batch is None:
                return None
            Reader.n += len(batch[1])
            return {src.config_["input"]["name"]: batch[0]}

    model = onnx.load(path)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    convs = [n.name for n in model.graph.node
             if n.op_type == "Conv" and not _smoothing_conv(n, shapes) and not _grouped_conv(n)]
    directory = os.path.dirname(os.path.abspath(out))
    with tempfile.TemporaryDirectory(dir=directory, prefix=".quantize.") as tmp:
        quantized = os.path.join(tmp, "int8.onnx")
        quantize_static(
            path, quantized, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"], nodes_to_quantize=convs,
        )
        model = onnx.load(quantized)
    config = dict(src.config_)
    config["quantized"] = {
        "what": "backbone dense convolutions (weights int8 per channel, activations uint8); "
                "grouped convolutions, means, precision matrices, distances and maps float32",
        "method": "onnxruntime static post-training quantization, QDQ, min/max calibration",
        "n_calibration_images": Reader.n,
        "n_convolutions": len(convs),
    }
    blob = _serialize(model, config)
    write_atomic(out, lambda f: f.write(blob))
    return out
