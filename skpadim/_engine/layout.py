"""Where the patches and their Gaussians are: everything a fitted model's spec fixes, no backbone.

A :class:`Layout` is built from the spec of a fitted state and its kept
channels alone: the patch grid and the kept channels of every layer
(:class:`~.embedding.PatchEmbedding`), the image size, the tiles and how they
share their Gaussians. It embeds the calibration sample's kept channels and
turns distances into smoothed maps, which is all the end of a fit needs
besides the statistics (:mod:`.finish`): a cluster worker that finishes a
block of positions builds a Layout, never the backbone.
"""

from .._sizes import any_size, size_problem
from .embedding import PatchEmbedding
from .maps import anomaly_maps
from .tiles import Tiling


class Layout:
    """The geometry of a fitted model: patch grid, kept channels, image size, tiles.

    Parameters
    ----------
    spec : dict
        The JSON spec of a fitted state (layer shapes, image size, tiles, options).
    feature_index : ndarray of int
        The kept channels (sorted indices into the concatenated layers).
    device : torch.device
        Where embeddings and maps are computed.
    """

    def __init__(self, spec, feature_index, device):
        self.device = device
        self.patches = PatchEmbedding([tuple(s) for s in spec["shapes"]], feature_index, device,
                                      spec.get("neighbourhood", 1))
        self.image_size = tuple(spec["image_size"])
        # Tiles (None: whole images); native: images must have image_size, never resized.
        self.tiling = Tiling.from_spec(spec) if spec.get("tiles") else None
        self.native = spec["params"].get("image_size", True) is None
        self.sizes = {"native_size": self.native, "image_size": list(self.image_size),
                      "tiles": spec.get("tiles")}  # what skpadim._sizes reads
        # Native size with shared tiles: images of any size, each cut into its own tiles.
        self.any_size = any_size(self.sizes)
        self._tilings = {self.image_size: self.tiling}

    def check_sizes(self, sizes, first=0, *, fitting=False):
        """Refuse images the model cannot take (:mod:`skpadim._sizes`), naming ``X[i]``;
        ``fitting``: every image of a fit must have the training images' size."""
        for i, size in enumerate(sizes, first):
            if fitting and self.native and tuple(size) != self.image_size:
                H, W = self.image_size
                raise ValueError(
                    f"X[{i}] is {size[0]} x {size[1]} pixels, but with image_size=None the detector "
                    f"works at the training images' own size, {H} x {W} pixels (that of the first), "
                    "and every image it is fitted on must have it. Resize the images to that size, "
                    "or set image_size to a fixed (height, width) that every image is resized to."
                )
            problem = size_problem(self.sizes, size)
            if problem is not None:
                raise ValueError(f"X[{i}] is {problem}.")

    def tiling_for(self, size):
        """The tiles of an image of ``size`` (the model's own with fixed sizes; None: no tiles)."""
        if self.tiling is None or not self.any_size:
            return self.tiling
        size = tuple(int(v) for v in size)
        tiling = self._tilings.get(size)
        if tiling is None:
            if len(self._tilings) > 64:  # a bounded cache of window weights
                self._tilings = {self.image_size: self.tiling}
            t = self.tiling
            tiling = self._tilings[size] = Tiling(size, t.size, t.stride, t.sharing)
        return tiling

    @property
    def grid(self):
        """(h, w) of the patch grid (of one tile, with tiles)."""
        return self.patches.grid

    @property
    def n_tiles(self):
        return 1 if self.tiling is None else self.tiling.n_tiles

    @property
    def n_positions(self):
        """Positions of the Gaussians: patch positions, times the tile locations with
        ``tile_sharing="position"``."""
        P = self.patches.n_positions
        return P if self.tiling is None else P * self.n_tiles // self.tiling.samples_per_image

    @property
    def samples_per_image(self):
        return 1 if self.tiling is None else self.tiling.samples_per_image

    def kept_item_bytes(self):
        """Bytes of one image in the calibration sample (every tile's kept channels)."""
        return 4 * self.n_tiles * sum(n * h * w for n, h, w in self.patches.kept_shapes)

    def take(self, feats, j):
        """Image ``j``'s kept channels, for the calibration sample: one tensor per layer,
        (n, h, w), or (n_tiles, n, h, w) with tiles."""
        if self.tiling is None:
            return self.patches.kept_channels(feats, j)
        return self.tiling.kept_channels(self.patches, feats, j)

    def embed_kept(self, items):
        """Embeddings of images given by :meth:`take`, in the statistics' layout."""
        if self.tiling is None:
            return self.patches.embed_kept(items)
        return self.tiling.embed_kept(self.patches, items)

    def maps(self, dist, sigma, size=None):
        """Distances (B, positions) from :func:`mahalanobis` -> smoothed maps (B, *image_size),
        or, for a model that takes any size, at the images' ``size``."""
        h, w = self.patches.grid
        if self.tiling is None:
            return anomaly_maps(dist.reshape(-1, h, w), self.image_size, sigma)
        tiling = self.tiling if size is None else self.tiling_for(size)
        return tiling.anomaly_maps(dist.reshape(-1, h, w), sigma)
