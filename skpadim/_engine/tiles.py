"""Tiles: images processed at their native resolution in tiles, maps stitched back.

With ``tile_size`` set, every image (at ``image_size``, or at its native
size with ``image_size=None``) is cut into tiles of ``tile_size`` pixels
every ``tile_stride`` pixels; the last row and column of tiles are moved
back to end at the image's border, so the tiles always cover the image.
All the tiles of a batch of images go through the backbone as one batch.

How the tiles share their Gaussians (``tile_sharing``):

``"position"``
    One Gaussian per patch position of every tile location: the PaDiM of the
    full-resolution image, for aligned parts. The statistics grow with the
    image area (``n_tiles * h * w`` positions).
``"shared"``
    One Gaussian per patch position *within* a tile, fitted on the tiles of
    every location: for textures, webs and periodic surfaces. The statistics
    do not depend on the image size; each image adds ``n_tiles`` samples.

Each tile's distance grid is upsampled to the tile's size; overlapping tiles
are blended with a smooth window (a raised cosine, positive everywhere),
normalized by the summed weights, so that equal tile maps stitch into the
same map (up to float rounding) without seams. The stitched map is smoothed with ``sigma`` in the
pixels of the stitched image.
"""

import torch

from .._map_rules import tile_starts, window
from .maps import smooth, upsample

SHARING = ("position", "shared")


class Tiling:
    """The tiles of images of ``image_size``: where they are, and how their maps stitch.

    Parameters
    ----------
    image_size, size, stride : (int, int)
        The (height, width) of the images, of the tiles, and of the step between tiles.
    sharing : {"position", "shared"}

    Examples
    --------
    >>> import torch
    >>> tiling = Tiling((40, 60), (32, 32), (16, 16), "shared")
    >>> tiling.starts  # the last row and column end at the border
    [(0, 0), (0, 16), (0, 28), (8, 0), (8, 16), (8, 28)]
    >>> flat = tiling.stitch(torch.full((6, 32, 32), 2.0))  # equal tiles: a flat map
    >>> flat.shape, bool((flat - 2.0).abs().max() < 1e-6)
    (torch.Size([1, 40, 60]), True)
    """

    def __init__(self, image_size, size, stride, sharing):
        self.image_size = tuple(int(v) for v in image_size)
        self.size = tuple(int(v) for v in size)
        self.stride = tuple(int(v) for v in stride)
        self.sharing = sharing
        (H, W), (th, tw), (sh, sw) = self.image_size, self.size, self.stride
        self.starts = [(y, x) for y in tile_starts(H, th, sh) for x in tile_starts(W, tw, sw)]
        self.n_tiles = len(self.starts)
        self._weights = {}  # device -> (tile window, 1 / summed weights)

    @classmethod
    def from_spec(cls, spec):
        t = spec["tiles"]
        return cls(spec["image_size"], t["size"], t["stride"], t["sharing"])

    def to_spec(self):
        return {"size": list(self.size), "stride": list(self.stride), "sharing": self.sharing}

    @property
    def identity(self):
        """One tile that is the whole image: tiling changes nothing."""
        return self.size == self.image_size

    @property
    def samples_per_image(self):
        """Samples each image adds to the statistics of every Gaussian."""
        return self.n_tiles if self.sharing == "shared" else 1

    def split(self, x):
        """(B, C, H, W) -> (B * n_tiles, C, th, tw), image-major (all tiles of image 0 first)."""
        if self.identity:
            return x
        th, tw = self.size
        tiles = torch.stack([x[:, :, y : y + th, c : c + tw] for y, c in self.starts], dim=1)
        return tiles.reshape(-1, *x.shape[1:2], th, tw)

    def stats_layout(self, emb):
        """Tile embeddings (P, d, B * n_tiles) in the layout of the Gaussians' statistics.

        ``"shared"``: unchanged, every tile is a sample. ``"position"``: (n_tiles * P, d, B),
        position ``t * P + p`` being patch ``p`` of tile ``t``.
        """
        if self.sharing == "shared" or self.n_tiles == 1:
            return emb
        P, d, BT = emb.shape
        T = self.n_tiles
        return emb.view(P, d, BT // T, T).permute(3, 0, 1, 2).reshape(T * P, d, BT // T)

    def kept_channels(self, patches, feats, j):
        """Image ``j``'s kept channels: one (n_tiles, n, h, w) tensor per layer."""
        T = self.n_tiles
        tiles = [patches.kept_channels(feats, j * T + t) for t in range(T)]
        return [torch.stack(layer) for layer in zip(*tiles)]

    def embed_kept(self, patches, items):
        """Embeddings of images given by :meth:`kept_channels`, in the statistics' layout."""
        per_tile = [[layer[t] for layer in item] for item in items for t in range(self.n_tiles)]
        return self.stats_layout(patches.embed_kept(per_tile))

    def _window(self, device):
        w = self._weights.get(device)
        if w is None:
            th, tw = self.size
            tile = torch.from_numpy(window(th)[:, None] * window(tw)[None, :])
            total = torch.zeros(self.image_size, dtype=torch.float64)
            for y, x in self.starts:
                total[y : y + th, x : x + tw] += tile
            w = self._weights[device] = (tile.float().to(device), (1.0 / total).float().to(device))
        return w

    def stitch(self, maps):
        """Tile maps (B * n_tiles, th, tw) -> image maps (B, H, W), overlaps blended."""
        if self.identity:
            return maps
        T = self.n_tiles
        th, tw = self.size
        tile_w, inv_total = self._window(maps.device)
        maps = maps.view(-1, T, th, tw) * tile_w
        out = maps.new_zeros(maps.shape[0], *self.image_size)
        for t, (y, x) in enumerate(self.starts):  # n_tiles slice additions per batch
            out[:, y : y + th, x : x + tw] += maps[:, t]
        return out.mul_(inv_total)

    def anomaly_maps(self, dist, sigma):
        """Tile distance grids (B * n_tiles, h, w) -> smoothed maps (B, H, W)."""
        return smooth(self.stitch(upsample(dist, self.size)), sigma)


def tiling_of_spec(spec, need):
    """The :class:`Tiling` a fitted state's spec describes (None: no tiles), after
    checking its values with ``need(ok, what)``."""
    t = spec.get("tiles")
    if t is None:
        return None
    pair = lambda v: isinstance(v, list) and len(v) == 2 and all(  # noqa: E731
        isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
    need(isinstance(t, dict) and set(t) == {"size", "stride", "sharing"} and pair(t["size"])
         and pair(t["stride"]) and t["sharing"] in SHARING
         and all(s <= z <= n for s, z, n in zip(t["stride"], t["size"], spec["image_size"])), "tiles")
    return Tiling.from_spec(spec)


def resolve(tile_size, tile_stride):
    """``((th, tw), (sh, sw))`` from valid parameters; the stride defaults to the tile size."""
    pair = lambda v: (int(v), int(v)) if not isinstance(v, (tuple, list)) else (int(v[0]), int(v[1]))  # noqa: E731
    size = pair(tile_size)
    stride = size if tile_stride is None else pair(tile_stride)
    return size, stride


def check_tiles(tile_size, tile_stride, image_size):
    """ValueErrors for tile parameters that do not tile images of ``image_size``."""
    size, stride = resolve(tile_size, tile_stride)
    if any(s > t for s, t in zip(stride, size)):
        raise ValueError(
            f"The 'tile_stride' parameter of PadimDetector is {tile_stride!r}, larger than "
            f"tile_size={tile_size!r}: the tiles would leave gaps. Use a stride of at most "
            "the tile size (equal: no overlap)."
        )
    if any(t > n for t, n in zip(size, image_size)):
        raise ValueError(
            f"The 'tile_size' parameter of PadimDetector is {tile_size!r}, larger than the "
            f"images ({image_size[0]} x {image_size[1]} pixels after image_size). Use a "
            "smaller tile_size, or tile_size=None."
        )
    return size, stride


def update_width(layout, n_positions, n_features, budget=512 << 20):
    """Images per statistics update: the default buffer, narrower when the statistics are large
    (tiles, native size) so that the buffer stays under ``budget`` bytes."""
    from .gaussian import BufferedUpdate

    if layout.tiling is None and not layout.native:
        return BufferedUpdate.WIDTH
    return int(min(BufferedUpdate.WIDTH, max(8, budget // (4 * n_positions * n_features))))


def memory_advice(layout):
    """What lowers a fit's memory, for the refusal of :func:`~.memory.check_fit_memory`."""
    tiling = layout.tiling
    if tiling is None:
        if not layout.native:
            return None
        return ("Set tile_size (e.g. tile_size=256 with tile_sharing='shared': memory "
                "independent of the image size), lower n_features, or set image_size to "
                "work on downscaled images")
    if tiling.sharing == "position":
        return (f"Use tile_sharing='shared' (one set of Gaussians for all {tiling.n_tiles} tile "
                "locations: memory independent of the image size), a larger tile_stride "
                "(fewer tile locations), lower n_features, or set image_size to work on "
                "downscaled images")
    return (f"Lower n_features, or use a larger tile_stride (each of up to 64 calibration "
            f"images keeps its {tiling.n_tiles} tiles), or set image_size to work on "
            "downscaled images")
