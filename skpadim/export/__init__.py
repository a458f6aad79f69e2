"""Export fitted detectors for deployment without torch: ONNX and OpenVINO IR.

:func:`to_onnx` writes one ONNX graph from an image batch to anomaly maps and
image scores, with the threshold and preprocessing facts in its metadata;
:func:`to_openvino` writes the same graph as an OpenVINO IR folder.
:mod:`skpadim.runtime` runs both without torch. Exporting needs torch (the
graph is traced from the fitted detector) and the ``onnx`` package
(``pip install "skpadim[export]"``). See docs/deploy.md.
"""

from ._onnx import to_onnx
from ._openvino import to_openvino
from ._quantize import quantize_int8

__all__ = ["quantize_int8", "to_onnx", "to_openvino"]
