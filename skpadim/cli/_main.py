"""The parser of ``skpadim`` and :func:`main`: run one command, turn failures into exit statuses.

Commands plug in through ``COMMANDS``: each module has ``add_parser(subparsers)``,
which adds its subparser and sets ``run`` as the function to call, and
``run(args)``, which returns an exit status (None means 0) or raises.
"""

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings

from .._install import RUNTIME
from . import _evaluate, _export, _fit, _info, _predict
from ._args import Parser, in_flags
from ._common import (
    EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, one_line,
)

COMMANDS = (_fit, _predict, _evaluate, _info, _export)

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

MODEL is a file of skpadim fit, or its export (skpadim export: an .onnx file
or an OpenVINO folder). predict, evaluate and info run exports without torch:
on an inspection machine, {install} is enough.

Exit status:
  0    success: every image was used
  1    the command failed (missing folder, no images, bad model file, no
       image usable, --strict and an image that cannot be used, ...)
  2    the command line is wrong (unknown option, missing argument, ...)
  3    done, but some images could not be used (unreadable, or a size the
       model cannot take): each is named on stderr and in the output (error
       column of the CSV, summary, report)
  130  interrupted (Ctrl-C); 143: terminated (SIGTERM). Output files are
       complete or absent; predict --csv FILE keeps the rows already
       written in FILE.partial""".format(install=RUNTIME)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` runs."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a batch scheduler, ``timeout``, ``kill``) stops the command as Ctrl-C does.

    Only while :func:`main` runs, and only in the main thread (where Python
    delivers signals); the previous handler is restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _pixel_limit(args):
    """The largest image the command decodes: ``--max-image-pixels``, or Pillow's guard.

    Pillow refuses images of more than twice ``PIL.Image.MAX_IMAGE_PIXELS``
    and warns above it, with words about attacks; the command takes every
    image up to its limit without a word, and names the limit and this
    option for those above it (the reason of their row). Pillow's setting is
    restored when the command ends.
    """
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    limit = getattr(args, "max_image_pixels", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if limit is not None:
            Image.MAX_IMAGE_PIXELS = limit / 2  # Pillow refuses above twice this
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def build_parser():
    """The argparse parser of ``skpadim`` (subcommands fit, predict, evaluate, info, export).

    Returns
    -------
    parser : argparse.ArgumentParser
        ``parser.parse_args(argv).run`` is the function of the chosen command.

    Examples
    --------
    >>> from skpadim.cli import build_parser
    >>> args = build_parser().parse_args(["info", "model.skpadim", "--json"])
    >>> args.command, args.model, args.json
    ('info', 'model.skpadim', True)
    """
    from .. import __version__

    parser = Parser(
        prog="skpadim", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"skpadim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"skpadim: warning: {in_flags(one_line(message))}", file=sys.stderr)


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
        exits with 2 itself), 3 when the command finished but some images
        could not be read, 130 when interrupted (SIGINT), 143 when
        terminated (SIGTERM).

    Examples
    --------
    >>> from skpadim.cli import main
    >>> main(["info", "no-such-model.skpadim"])
    1
    """
    args = build_parser().parse_args(argv)
    debug = os.environ.get("SKPADIM_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings(), _sigterm_as_interrupt(), _pixel_limit(args):
        if not debug:
            warnings.showwarning = _show_warning
            # torch's note on read-only arrays decoded by Pillow: harmless, not actionable.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        try:
            status = args.run(args)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, _Terminated)
            print(f"skpadim: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        except BrokenPipeError:  # e.g. skpadim predict ... | head: stop quietly
            try:  # as the Python docs advise: no second error when stdout is flushed at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return EXIT_FAILURE
        except Exception as exc:
            if debug:
                raise
            print(f"skpadim: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_FAILURE
    return EXIT_OK if status is None else status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
