"""Maps of tiled exports, in numpy: tiles cut out, their distance grids stitched and smoothed.

The graph of a tiled detector (format version 2) returns each tile's
distance grid; the runtime does the rest as :mod:`skpadim._engine.tiles`
does with torch, following the same rules (:mod:`skpadim._map_rules`): each
grid is upsampled bilinearly to the tile's size, weighted by the tile
window, added into the image and divided by the summed weights, then the
stitched map is smoothed with ``sigma`` (mirror borders), and the image
score is its maximum or the mean of its highest values. All in float32,
the maps agree with the detector's to float32 rounding.
"""

import numpy as np

from .._map_rules import bilinear_matrix, gaussian_taps, kernel_radius, pad_mode, tile_starts, top_count, window

_F = np.float32


class TileMaps:
    """The tiles of images of ``image_size`` and the maps stitched from them.

    Parameters
    ----------
    image_size : (int, int)
        The images' (height, width).
    tiles : dict
        ``{"size": [th, tw], "stride": [sh, sw], "sharing": ...}`` (``fitted_params_["tiles"]``).
    grid : (int, int)
        (h, w) of a tile's distance grid.
    """

    def __init__(self, image_size, tiles, grid):
        self.image_size = tuple(int(v) for v in image_size)
        (H, W), (th, tw), (sh, sw) = self.image_size, tiles["size"], tiles["stride"]
        self.size = (int(th), int(tw))
        self.starts = [(y, x) for y in tile_starts(H, th, sh) for x in tile_starts(W, tw, sw)]
        h, w = grid
        self._rows = bilinear_matrix(h, th).astype(_F)  # (th, h)
        self._cols = bilinear_matrix(w, tw).astype(_F).T.copy()  # (w, tw)
        self._tile_weight = (window(th)[:, None] * window(tw)[None, :]).astype(_F)
        total = np.zeros(self.image_size)
        for y, x in self.starts:
            total[y : y + th, x : x + tw] += window(th)[:, None] * window(tw)[None, :]
        self._inv_total = (1.0 / total).astype(_F)

    @property
    def n_tiles(self):
        return len(self.starts)

    def split(self, x):
        """(B, 3, H, W) images -> (B, n_tiles, 3, th, tw) tiles, image-major."""
        th, tw = self.size
        return np.ascontiguousarray(np.stack([x[:, :, y : y + th, c : c + tw] for y, c in self.starts], axis=1))

    def stitch(self, dist):
        """Tile distance grids (B, n_tiles, h, w) -> stitched maps (B, H, W), unsmoothed."""
        th, tw = self.size
        up = np.matmul(np.matmul(self._rows, dist.astype(_F, copy=False)), self._cols)  # (B, T, th, tw)
        up *= self._tile_weight
        out = np.zeros((dist.shape[0], *self.image_size), _F)
        for t, (y, x) in enumerate(self.starts):
            out[:, y : y + th, x : x + tw] += up[:, t]
        out *= self._inv_total
        return out


def smooth(maps, sigma):
    """Separable Gaussian blur of (B, H, W) float32 maps, the estimator's taps and borders."""
    if sigma == 0:
        return maps
    r = kernel_radius(sigma)
    taps = gaussian_taps(sigma).astype(_F)
    mode = "reflect" if pad_mode(r, maps.shape[-2:]) == "reflect" else "edge"
    x = np.pad(maps, ((0, 0), (r, r), (r, r)), mode=mode)
    W = maps.shape[2]
    rows = taps[0] * x[:, :, 0:W]
    for k in range(1, len(taps)):
        rows += taps[k] * x[:, :, k : k + W]
    H = maps.shape[1]
    out = taps[0] * rows[:, 0:H]
    for k in range(1, len(taps)):
        out += taps[k] * rows[:, k : k + H]
    return out


def image_scores(maps, how="max"):
    """Anomaly scores (B,) float32 of maps (B, H, W), as the estimator's ``image_score``."""
    flat = maps.reshape(len(maps), -1)
    if how == "max":
        return flat.max(axis=1)
    k = top_count(how, flat.shape[1])
    return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1, dtype=np.float64).astype(_F)
