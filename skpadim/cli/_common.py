"""What every command shares: exit statuses, messages on stderr, progress bars, checks."""

import math
import os
import sys

# Exit statuses (documented in skpadim.cli and docs/cli.md).
EXIT_OK = 0
EXIT_FAILURE = 1  # nothing usable: the command stopped on an error
EXIT_USAGE = 2  # argparse's own status for a bad command line
EXIT_SKIPPED = 3  # finished, but some images could not be used (unreadable, wrong size): left out
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15

# Unreadable files listed in a summary on stdout; stderr names every one of them.
SUMMARY_LIMIT = 20


class CLIError(Exception):
    """A failure to report as one line, exit status 1."""


def require_torch(what):
    """A CLIError, one line, when torch (or torchvision) is not installed: ``what`` needs it."""
    from .._install import TORCH, has_torch

    if not has_torch():
        raise CLIError(
            f"{what} needs torch, which is not installed here: {TORCH}. Without torch, skpadim "
            "predict, evaluate and info run exported models (skpadim export: an .onnx file or "
            "an OpenVINO folder)."
        )


def one_line(exc):
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError):  # str(KeyError) is the quoted key only
        text = f"missing key {text}"
    return text or type(exc).__name__


def note(message, bar=None):
    """A line on stderr that does not break the progress bar ``bar``."""
    if bar is not None and not bar.disable:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def warn(message, bar=None):
    note(f"skpadim: warning: {message}", bar)


def report_unreadable(path, reason, bar=None):
    """One stderr line per image that could not be used: unreadable, or of a size the model
    cannot take."""
    warn(f"cannot use '{path}': {reason}; skipped", bar)


def print_skipped(failures, header):
    """The summary lines (stdout) of the files left out of a run."""
    if not failures:
        return
    print(header)
    for f in failures[:SUMMARY_LIMIT]:
        print(f"  {f.path}: {f.reason}")
    if len(failures) > SUMMARY_LIMIT:
        print(f"  ... and {len(failures) - SUMMARY_LIMIT} more (each is named on stderr).")


def duration(seconds):
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{seconds:.1f}s")


def human_size(n):
    if n < 1024:
        return f"{n} B"
    units = ["KB", "MB", "GB", "TB"]
    k = min(int(math.log(n, 1024)), len(units))
    return f"{n / 1024**k:.1f} {units[k - 1]}"


def check_output_file(path, option):
    if os.path.isdir(path):
        raise CLIError(f"{option} '{path}' is a folder; pass a file name.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"The folder '{parent}' of {option} does not exist; create it first.")


def progress(total, desc, enabled):
    """A bar over images on stderr with the rate and the time left."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="img", dynamic_ncols=True, disable=not enabled,
        file=sys.stderr,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} images "
        "[{elapsed} elapsed, {remaining} left, {rate_fmt}]",
    )
