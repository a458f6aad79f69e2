"""Argument parsing shared by the commands: the parser class, value types, common options."""

import argparse
import math
import re

#: How the command line names the native image size in messages (skpadim._sizes).
NATIVE = "--image-size native"

__all__ = [
    "NATIVE", "Parser", "in_flags", "add_command", "add_run_options", "contamination", "finite", "fraction",
    "image_size", "layers", "positive_int", "tile_size",
]


# The options of skpadim fit that set a PadimDetector parameter, by parameter name.
FLAGS = {
    "n_features": "--n-features", "image_size": "--image-size", "tile_size": "--tile-size",
    "tile_stride": "--tile-stride", "tile_sharing": "--tile-sharing", "batch_size": "--batch-size",
    "backbone_dtype": "--backbone-dtype", "layers": "--layers", "weights": "--weights",
    "contamination": "--contamination", "device": "--device", "backbone": "--backbone",
}
_NAMES = "|".join(FLAGS)


def _value(text):
    """A Python value of a message as a flag's value: (256, 320) -> 256x320, 'shared' -> shared."""
    pair = re.fullmatch(r"[(\[](\d+), ?(\d+)[)\]]", text)
    return f"{pair[1]}x{pair[2]}" if pair else text.strip("'\"")


def in_flags(message):
    """An estimator's message in the command line's words: its parameters as the flags of
    ``skpadim fit`` (``tile_size=256`` -> ``--tile-size 256``, ``image_size=None`` ->
    ``--image-size native``, "the 'n_features' parameter of PadimDetector" ->
    ``--n-features``, ``n_features`` -> ``--n-features``).

    Examples
    --------
    >>> print(in_flags("Set tile_size (e.g. tile_size=256 with tile_sharing='shared'), lower "
    ...                "n_features, or image_size=None"))
    Set --tile-size (e.g. --tile-size 256 with --tile-sharing shared), lower --n-features, or --image-size native
    """
    message = re.sub(r"\bimage_size=None\b", "--image-size native", message)
    message = re.sub(rf"\b({_NAMES})=(\([^)]*\)|\[[^\]]*\]|'[^']*'|[\w.]+)",
                     lambda m: f"{FLAGS[m[1]]} {_value(m[2])}", message)
    message = re.sub(rf"\b[Tt]he '({_NAMES})' parameter of PadimDetector\b", lambda m: FLAGS[m[1]], message)
    return re.sub(r"(?<![-\w'])(n_features|image_size|tile_size|tile_stride|tile_sharing|batch_size|"
                  r"backbone_dtype)\b", lambda m: FLAGS[m[1]], message)


class Parser(argparse.ArgumentParser):
    """Usage errors as one line pointing to --help, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def image_size(text):
    if text.lower() == "native":
        return None
    return tile_size(text)


def tile_size(text):
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected SIZE or HEIGHTxWIDTH in pixels (e.g. 224 or 256x320), got {text!r}"
        )
    return values[0] if len(values) == 1 else tuple(values)


def finite(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def fraction(text):
    value = finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def contamination(text):
    if text == "auto":
        return text
    value = finite(text)
    if not 0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 0.5], got {text!r}")
    return value


def layers(text):
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated module names, e.g. layer1,layer2,layer3")
    return names


def add_command(subparsers, name, help, epilog, run):
    """The parser of one command; ``run(args)`` is what :func:`skpadim.cli.main` calls."""
    p = subparsers.add_parser(
        name, help=help, description=help, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    return p


def add_run_options(p, batch_size=None, scheduler=False):
    """Options of every command that reads images: batch size, --strict, --quiet
    (and ``--scheduler`` for the commands that can run on a Dask cluster)."""
    default = batch_size or "the model's"
    p.add_argument("--batch-size", type=positive_int, default=batch_size, metavar="N",
                   help=f"images per forward pass (default: {default})")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first image that cannot be read (exit status 1) instead "
                        "of skipping it, listing it and finishing with exit status 3")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--max-image-pixels", type=positive_int, default=None, metavar="N",
                   help="refuse images of more than N pixels (default: Pillow's guard against "
                        "decompression bombs, 178956970); raise it for large images you trust")
    if scheduler:
        p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on the Dask cluster whose scheduler is at ADDRESS, e.g. "
                            "tcp://10.0.0.5:8786; the workers read the image files, so they "
                            "must see the same paths (needs pip install \"skpadim[dask]\" "
                            "here and on the workers)")
