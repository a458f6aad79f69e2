"""``skpadim export``: a fitted model file as ONNX (or an OpenVINO IR folder).

One command module like the others: :func:`add_parser` adds the subcommand
to the ``skpadim`` parser and :func:`run` executes it (raising on failure).
"""

import argparse
import os

from .._install import RUNTIME, extra
from ._args import add_command
from ._common import CLIError, human_size, require_torch

_HELP = "export a fitted model to ONNX or OpenVINO, to predict without torch"

_EPILOG = """\
Example:
  skpadim export model.skpadim --out model.onnx
  skpadim export model.skpadim --out model_ir --format openvino

The export holds the whole prediction (normalization, backbone up to the last
feature layer, embedding, Mahalanobis distances, upsampling, smoothing, image
maximum), the threshold and the image size. Run it on a machine without torch:
  {install}
  skpadim predict model.onnx IMAGES... (or, in Python: skpadim.runtime.load('model.onnx'))
A model whose weights pass 2 GB (e.g. wide_resnet50_2 with 550 channels) gets
one side file, FILE.data, next to FILE: copy both. See docs/deploy.md.""".format(install=RUNTIME)


def add_parser(subparsers):
    """Add the ``export`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    p = add_command(subparsers, "export", _HELP, _EPILOG, run)
    p.add_argument("model", metavar="MODEL", help="model file written by skpadim fit")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the .onnx file to write (a folder for --format openvino)")
    p.add_argument("--format", choices=["onnx", "openvino"], default=None,
                   help="onnx (default) or openvino (an IR folder); default: openvino when --out "
                        "ends with a path separator or is an existing folder, else onnx")
    p.add_argument("--opset", type=_opset, default=None, metavar="N",
                   help="ONNX opset version (default: 17)")
    return p


def _opset(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer opset version, got {text!r}") from None
    if value < 13:
        raise argparse.ArgumentTypeError(f"expected an opset version of at least 13, got {text!r}")
    return value


def _size(path):

    if os.path.isdir(path):
        return human_size(sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)))
    return human_size(os.path.getsize(path))


def run(args):
    """Run ``skpadim export`` with the parsed ``args``."""
    from .._export_format import side_file_name
    from .._model_kind import EXPORTED, model_kind
    from ._model import load_model

    fmt = args.format
    if fmt is None:
        fmt = "openvino" if args.out.endswith(("/", os.sep)) or os.path.isdir(args.out) else "onnx"
    out = args.out.rstrip("/" + os.sep) or args.out
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise CLIError(f"The folder '{parent}' of --out does not exist; create it first.")
    if fmt == "onnx" and os.path.isdir(out):
        raise CLIError(f"--out '{out}' is a folder; pass a file name such as model.onnx (or --format openvino).")
    kind = model_kind(args.model)
    if kind in EXPORTED:
        raise CLIError(
            f"'{args.model}' is already an export ({kind}); skpadim predict, evaluate and info run "
            "it as it is. skpadim export reads the model files of skpadim fit."
        )
    require_torch("skpadim export")
    detector = load_model(args.model)
    if fmt == "onnx":
        try:
            from ..export import to_onnx
        except ImportError as exc:
            raise CLIError(f"{exc}; install the export extra: {extra('export')}.") from None
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise CLIError(f"skpadim export needs the onnx package: {extra('export')}.") from None
        to_onnx(detector, out, opset=args.opset)
        side = os.path.join(parent, side_file_name(out))
        extra = ""
        from .._export_format import read_onnx

        if read_onnx(out).get("external_data"):
            extra = f" and its weights in {side} ({_size(side)}; keep the two files together)"
        print(f"Exported {args.model} to {out} ({_size(out)}){extra}.")
    else:
        try:
            from ..export import to_openvino

            to_openvino(detector, out, opset=args.opset)
        except ImportError as exc:
            raise CLIError(str(exc)) from None
        print(f"Exported {args.model} to the OpenVINO folder {out} ({_size(out)}).")
    h, w = detector.fitted_params_["image_size"]
    print(f"Threshold: {-float(detector.offset_):.6g}; image size: {h} x {w} (height x width).")
    print(f"Next, on a machine without torch: {RUNTIME}, then skpadim predict {out} IMAGES... "
          f"(or, in Python: skpadim.runtime.load({out!r}).predict(images)).")
