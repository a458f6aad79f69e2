"""Which image sizes a fitted model takes, and why not (torch-free: estimator, runtime, command line).

A model fitted at a fixed ``image_size`` resizes every image to it: any
size is taken. A model fitted at the native size (``image_size=None``)
works at the training images' own size, with tiles or not; with tiles that
share their Gaussians (``tile_sharing="shared"``) nothing in the model
depends on the image size, so it takes any image at least one tile large,
cut into its own tiles. :func:`size_problem` says which, from a fitted
model's ``fitted_params_``; the estimator, the deployment runtime and the
command line all ask it, so they take and refuse the same images.

Examples
--------
>>> from skpadim._sizes import size_problem
>>> native = {"native_size": True, "image_size": [64, 64], "tiles": None}
>>> size_problem(native, (64, 64)) is None
True
>>> print(size_problem(native, (48, 80)))
48 x 80 pixels, but the model works at the training images' own size, 64 x 64 (fitted with image_size=None, the native size); resize the image to 64 x 64
>>> shared = {"native_size": True, "image_size": [64, 64],
...           "tiles": {"size": [32, 32], "stride": [32, 32], "sharing": "shared"}}
>>> size_problem(shared, (48, 80)) is None
True
>>> print(size_problem(shared, (16, 80)))
16 x 80 pixels, smaller than the model's 32 x 32 tiles; an image must be at least one tile large
"""

__all__ = ["any_size", "one_size_runs", "size_problem"]


def any_size(fitted):
    """Whether a native-size model takes images of any size (at least one tile): shared tiles."""
    tiles = fitted.get("tiles")
    return bool(fitted.get("native_size")) and tiles is not None and tiles["sharing"] == "shared"


def size_problem(fitted, size, native="image_size=None"):
    """Why the model described by ``fitted`` (its ``fitted_params_``) cannot take an image of
    ``size`` (height, width), in words that start with the size; None if it can. ``native``
    names the setting of the native size in the caller's words (the command line's
    ``--image-size native``)."""
    if not fitted.get("native_size"):
        return None
    h, w = (int(v) for v in size)
    if any_size(fitted):
        th, tw = fitted["tiles"]["size"]
        if h < th or w < tw:
            return (f"{h} x {w} pixels, smaller than the model's {th} x {tw} tiles; an image "
                    "must be at least one tile large")
        return None
    H, W = (int(v) for v in fitted["image_size"])
    if (h, w) == (H, W):
        return None
    kind = "" if fitted.get("tiles") is None else " in tiles with a Gaussian per tile location"
    return (f"{h} x {w} pixels, but the model works at the training images' own size, {H} x {W} "
            f"(fitted with {native}, the native size{kind}); resize the image to {H} x {W}")


def one_size_runs(sizes, longest):
    """``(start, stop)`` of the runs of consecutive images of one size in ``sizes``, each at
    most ``longest(size)`` images long (at least one): the batches of a model that takes
    any size, whose images go to the backbone one size at a time.

    Examples
    --------
    >>> list(one_size_runs([(4, 4), (4, 4), (4, 4), (8, 8)], lambda size: 2))
    [(0, 2), (2, 3), (3, 4)]
    """
    start = 0
    while start < len(sizes):
        limit = max(1, int(longest(sizes[start])))
        stop = start + 1
        while stop < len(sizes) and sizes[stop] == sizes[start] and stop - start < limit:
            stop += 1
        yield start, stop
        start = stop
