"""``skpadim info``: describe a model, a file of ``skpadim fit`` or an export."""

import json

from ._args import add_command

NAME = "info"
HELP = "describe a model (a file of skpadim fit, or an export)"
EPILOG = """\
Example:
  skpadim info model.skpadim
  skpadim info model.onnx --json

Shows every parameter that shapes the model (backbone, layers, channels,
normalization, image size, tiles, covariance, smoothing, image score), the
training images and the threshold, with the threshold that each expected
fraction of flagged good images gives (files of skpadim fit)."""


def add_parser(subparsers):
    p = add_command(subparsers, NAME, HELP, EPILOG, run)
    p.add_argument("model", metavar="MODEL",
                   help="model file written by skpadim fit, or an export (.onnx file or OpenVINO folder)")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    return p


def run(args):
    from ._describe import describe, lines
    from ._model import load_model

    detector = load_model(args.model)
    info = describe(detector, args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    rows = lines(info)
    width = max(len(k) for k, _ in rows)
    for key, text in rows:
        print(f"{key:<{width}}  {text}")
