"""The ``skpadim`` command line: fit, predict, evaluate and inspect models on folders.

Run ``skpadim --help`` (or ``python -m skpadim --help``) and
``skpadim COMMAND --help``; docs/cli.md walks through a session.

Exit statuses:

===  ==================================================================
0    success: the command finished and every image was read
1    the command failed: a missing folder, no images, an unreadable or
     damaged model file, weights that cannot be loaded, no image that
     could be read, or ``--strict`` and an unreadable image
2    the command line is wrong: unknown option, missing argument, a
     value of the wrong type
3    the command finished, but some images (or masks) could not be used
     (unreadable, or a size the model cannot take) and were left out: each
     is named on stderr and in the output (the ``error`` column of
     predict's CSV, the summary of fit and evaluate, the report)
130  interrupted (SIGINT, Ctrl-C)
143  terminated (SIGTERM)
===  ==================================================================

Every error is one line on stderr, ``skpadim: error:`` followed by what
went wrong and what to do; every image that cannot be used one line
``skpadim: warning: cannot use 'PATH': REASON; skipped``. Set
``SKPADIM_DEBUG=1`` to get the Python traceback instead. Output files are
never half-written: they are written under a temporary name and renamed
when complete; after an error or an interrupt, ``predict --csv FILE``
keeps the rows already written in ``FILE.partial``.

The package uses the public API of :class:`skpadim.PadimDetector` and of
:mod:`skpadim.runtime`: ``predict``, ``evaluate`` and ``info`` take a file of
``fit`` or an export alike, and run without torch on exports (``fit`` and
``export`` say in one line that they need it). One module per command
(``_fit``, ``_predict``, ``_evaluate``, ``_info``, ``_export``), each with
``add_parser(subparsers)`` and ``run(args)``, listed in ``_main.COMMANDS``.

Examples
--------
>>> from skpadim.cli import build_parser
>>> build_parser().parse_args(["fit", "data/good", "--out", "m.skpadim"]).image_size
224
"""

from ._main import build_parser, main

__all__ = ["build_parser", "console", "main"]


def console():
    """Entry point of the ``skpadim`` program and of ``python -m skpadim``.

    The program owns its process, so, unlike the estimator, it raises
    glibc's allocator thresholds for the whole run (freed activation buffers
    are reused instead of unmapped and faulted in again: about 1.3x less CPU
    time, ``python benchmarks/allocator.py``) and runs scipy's OpenBLAS on
    one thread, which lets the end of fit use it on CPUs where it is faster
    than torch's LAPACK (:mod:`skpadim._engine.lapack`); then it exits with
    :func:`main`'s status. Call :func:`main` to run the command line inside
    your own process without that.
    """
    import sys

    from .._engine.heap import tune_process_allocator
    from .._engine.lapack import single_threaded_process

    tune_process_allocator()
    single_threaded_process()  # torch-free: scipy's OpenBLAS, where there is one
    sys.exit(main())
