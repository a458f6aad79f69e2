"""What ``skpadim fit`` checks of its options and images, in the words of its flags.

Before any work: the tile options together (:func:`check_tile_options`).
Before the check of the files: for ``--image-size native``, the first
readable image fixes the size, and :func:`native_size_rule` is the rule by
which the check skips the images of another size (on the workers too, with
``--scheduler``), the estimator's own rule for a fit at the native size.
After the fit: :func:`warn_few_images` (docs/safety.md, "Very small
training sets").
"""

import functools

from ._args import NATIVE
from ._common import CLIError, warn


def check_tile_options(args):
    """The tile options make sense together (flags named, before any work)."""
    if args.tile_size is None:
        given = [f for f, v in (("--tile-stride", args.tile_stride), ("--tile-sharing", args.tile_sharing))
                 if v is not None]
        if given:
            raise CLIError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} "
                           "--tile-size (e.g. --tile-size 256); without it, whole images are processed.")
        return
    size, stride = _pair(args.tile_size), _pair(args.tile_stride or args.tile_size)
    if any(s > t for s, t in zip(stride, size)):
        raise CLIError(f"--tile-stride {_text(args.tile_stride)} is larger than --tile-size "
                       f"{_text(args.tile_size)}: the tiles would leave gaps. Use a stride of at "
                       "most the tile size (equal: no overlap).")
    if args.image_size is not None:
        _check_tiles_fit(args, _pair(args.image_size), f"--image-size {_text(args.image_size)}")


def _check_tiles_fit(args, image, where):
    if any(t > n for t, n in zip(_pair(args.tile_size), image)):
        raise CLIError(f"--tile-size {_text(args.tile_size)} is larger than the images "
                       f"({image[0]} x {image[1]} pixels, {where}); use a smaller --tile-size, "
                       "or leave it out to process whole images.")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _text(v):
    return str(v) if isinstance(v, int) else f"{v[0]}x{v[1]}"


def training_size_problem(size, path, got):
    """Why a training image of size ``got`` cannot join a fit at the native size ``size``,
    fixed by the first training image ``path``; None if it can (runs on Dask workers too)."""
    if tuple(got) == tuple(size):
        return None
    h, w = size
    return (f"{got[0]} x {got[1]} pixels, but {NATIVE} fits at the size of the first "
            f"training image, '{path}' ({h} x {w}), which every training image must have; "
            f"pass --image-size {h}x{w} to resize every image to it instead")


def native_size_rule(items, args, client):
    """For ``--image-size native``: the rule that keeps the training images of the first
    readable one's size (found here, or on a worker with ``client``); None for fixed sizes."""
    from .._batch import first_readable

    if args.image_size is not None:
        return None
    paths = [p for p in items if isinstance(p, str)]
    found = first_readable(paths) if client is None else client.submit(first_readable, paths).result()
    if found is None:
        return None  # nothing readable: the check names every file
    path, size = found
    if args.tile_size is not None:
        _check_tiles_fit(args, size, f"the size of the first training image, '{path}', with "
                                     "--image-size native")
    return functools.partial(training_size_problem, size, path)


def warn_few_images(detector):
    """docs/safety.md, "Very small training sets": with no more samples per Gaussian than
    features, epsilon alone sets the variance in the directions the images do not span."""
    fitted = detector.fitted_params_
    n, d = int(detector.n_samples_seen_), int(fitted["n_features"])
    tiles = fitted["tiles"]
    per_image = fitted["n_tiles"] if tiles is not None and tiles["sharing"] == "shared" else 1
    samples = n * per_image
    if samples > d:
        return
    each = f" ({per_image} tiles each: {samples} samples per Gaussian)" if per_image > 1 else ""
    warn(f"fitted on {n} images{each}, no more than the {d} features of each Gaussian: in the "
         "directions they do not span, epsilon alone sets the variance and dominates the scores "
         f"(docs/safety.md, 'Very small training sets'). Fit on more than {d} images, or keep "
         f"fewer features than the {samples} samples with --n-features.")
