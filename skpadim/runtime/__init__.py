"""Run exported detectors without torch: numpy, Pillow and onnxruntime (or OpenVINO).

:class:`OnnxDetector` opens a file written by :func:`skpadim.export.to_onnx`
and offers :class:`skpadim.PadimDetector`'s prediction methods
(``score_samples``, ``decision_function``, ``predict``, ``anomaly_map``)
for the same inputs, with the same results; :class:`OpenVinoDetector` does
the same for an OpenVINO IR folder from :func:`skpadim.export.to_openvino`,
and :func:`load` opens either. Nothing here imports torch or torchvision:
``pip install "skpadim[runtime]"`` on the inspection machine is enough.
See docs/deploy.md.
"""

from ._detector import OnnxDetector, OpenVinoDetector, is_exported, load
from .._export_format import FormatError
from ._resize import resize

__all__ = ["FormatError", "OnnxDetector", "OpenVinoDetector", "is_exported", "load", "resize"]
