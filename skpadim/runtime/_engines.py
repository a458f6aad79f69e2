"""Inference engines behind the runtime: onnxruntime and OpenVINO.

An engine is built from a checked model file and runs one preprocessed batch:
``engine(x) -> [outputs]``, float32 numpy arrays (``anomaly_maps, image_scores``
from images, ``tile_distances`` from tiles).
Neither imports torch.
"""

import numbers

from .._install import extra

BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16", "f16")


def _missing(package, name):
    return ImportError(
        f"This needs the {package} package, which is not installed; install it with "
        f"{extra(name)} (or pip install {package})."
    )


def check_options(backend, n_threads, inference_precision, owner):
    if backend not in BACKENDS:
        raise ValueError(f"The 'backend' parameter of {owner} must be one of {BACKENDS}; got {backend!r}.")
    if n_threads is not None and (
        not isinstance(n_threads, numbers.Integral) or isinstance(n_threads, bool) or n_threads < 1
    ):
        raise ValueError(f"The 'n_threads' parameter of {owner} must be None or a positive int; got {n_threads!r}.")
    if inference_precision not in PRECISIONS:
        raise ValueError(
            f"The 'inference_precision' parameter of {owner} must be one of {PRECISIONS}; "
            f"got {inference_precision!r}."
        )
    if inference_precision != "f32" and backend != "openvino":
        raise ValueError(
            f"inference_precision={inference_precision!r} needs backend='openvino' (onnxruntime "
            "runs the exported float32 graph as it is)."
        )


class OrtEngine:
    """onnxruntime on the CPU (or the providers given)."""

    def __init__(self, path, n_threads=None, providers=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise _missing("onnxruntime", "runtime") from None
        options = ort.SessionOptions()
        if n_threads is not None:
            options.intra_op_num_threads = int(n_threads)
        try:
            self.session = ort.InferenceSession(
                path, sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"onnxruntime cannot load '{path}': {str(exc).splitlines()[0]}") from None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x):
        return self.session.run(self.outputs, {self.input: x})


class OpenVinoEngine:
    """OpenVINO on the CPU, from an ONNX file or an IR ``model.xml``.

    One infer request: calls from several threads at once must not share an
    engine (an onnxruntime session may be shared).
    """

    def __init__(self, path, n_threads=None, inference_precision="f32"):
        try:
            import openvino as ov
        except ImportError:
            raise _missing("openvino", "openvino") from None
        config = {"INFERENCE_PRECISION_HINT": inference_precision}
        if n_threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(n_threads)
        try:
            core = ov.Core()
            model = core.read_model(path)
            # The batch size is dynamic in the file; keep it so.
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise ValueError(f"OpenVINO cannot load '{path}': {str(exc).splitlines()[0]}") from None
        self._request = self.compiled.create_infer_request()
        self._outputs = list(self.compiled.outputs)

    def __call__(self, x):
        result = self._request.infer({0: x})
        return [result[o].copy() for o in self._outputs]
