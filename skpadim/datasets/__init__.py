"""Data sets for visual anomaly detection: a generator and folder loaders.

- :func:`make_anomaly_images` generates images of a woven industrial texture,
  some with a scratch, a spot or a missing patch, with pixel masks.
- :func:`load_mvtec`, :func:`load_folder` and :func:`load_magnetic_tile` list
  the image files of a data set already on disk (nothing is downloaded) and
  return a :class:`sklearn.utils.Bunch` with ``images``, ``labels``,
  ``masks``, ``defect_types`` and ``root``.
- :func:`read_masks` reads the ground-truth masks of such a Bunch.

Labels follow the anomaly-detection convention: 1 = anomalous, 0 = normal.

Examples
--------
>>> from skpadim.datasets import make_anomaly_images
>>> X, y, masks = make_anomaly_images(4, 2, image_size=32, random_state=0)
>>> X.shape, y.tolist(), masks.shape
((6, 32, 32, 3), [0, 0, 0, 0, 1, 1], (6, 32, 32))
"""

from ._files import IMAGE_EXTENSIONS
from ._loaders import load_folder, load_magnetic_tile, load_mvtec
from ._masks import read_masks
from ._synthetic import DEFECT_TYPES, make_anomaly_images

__all__ = [
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "load_folder",
    "load_magnetic_tile",
    "load_mvtec",
    "make_anomaly_images",
    "read_masks",
]
