import sys
import warnings

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from skpadim import metrics  # noqa: E402
from skpadim.plot import (  # noqa: E402
    MASK_COLOR,
    REGION_COLOR,
    plot_anomaly_overlay,
    plot_detection,
    plot_pro,
    plot_roc,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def ax():
    return plt.subplots(figsize=(4, 4))[1]


def blob_example(size=48):
    """A gray image, a mask with one square defect and a map peaking on it."""
    rng = np.random.default_rng(0)
    image = (rng.random((size, size)) * 255).astype(np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    mask[10:20, 12:24] = True
    yy, xx = np.mgrid[:size, :size]
    amap = 10.0 * np.exp(-((yy - 15) ** 2 + (xx - 18) ** 2) / 40.0) + rng.random((size, size))
    return image, mask, amap


def legend_texts(ax):
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def check_png(path, min_bytes=2_000, max_bytes=500_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert min_bytes < len(data) < max_bytes
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


# --------------------------------------------------------------------------
# plot_anomaly_overlay
# --------------------------------------------------------------------------
def test_overlay_draws_image_heat_map_outlines_and_legend(ax, tmp_path):
    image, mask, amap = blob_example()
    out = plot_anomaly_overlay(image, amap, mask, threshold=6.0, ax=ax, alpha=0.4,
                               vmin=0, vmax=12, title="blob")
    assert out is ax
    assert len(ax.images) == 2
    picture, heat = ax.images
    assert picture.get_cmap().name == "gray" and picture.get_clim() == (0, 255)
    assert heat.get_alpha() == 0.4 and heat.get_clim() == (0, 12)
    np.testing.assert_array_equal(heat.get_array(), amap)
    assert len(ax.collections) == 2  # ground-truth and flagged outlines
    colors = [tuple(c.get_edgecolor()[0]) for c in ax.collections]
    assert colors == [matplotlib.colors.to_rgba(MASK_COLOR), matplotlib.colors.to_rgba(REGION_COLOR)]
    assert legend_texts(ax) == ["defect (ground truth)", "map ≥ 6 (flagged)"]
    assert ax.get_title() == "blob"
    path = tmp_path / "overlay.png"
    ax.figure.savefig(path, dpi=50)
    assert check_png(path) == (200, 200)


def test_overlay_without_mask_or_threshold_has_no_outline_nor_legend(ax):
    image, _, amap = blob_example()
    plot_anomaly_overlay(image / 255.0, amap, ax=ax)
    assert len(ax.images) == 2
    assert len(ax.collections) == 0
    assert ax.get_legend() is None
    assert ax.images[0].get_clim() == (0, 1.0)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_overlay_accepts_gray_rgb_and_rgba(ax, channels):
    image, mask, amap = blob_example()
    color = np.repeat(image[..., None], channels, axis=-1)
    plot_anomaly_overlay(color, amap, mask.astype(np.uint8), ax=ax)
    shown = ax.images[0].get_array()
    assert shown.shape == ((48, 48) if channels == 1 else (48, 48, 3))


def test_overlay_empty_flagged_region_keeps_legend_entry_without_warning(ax):
    image, mask, amap = blob_example()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_anomaly_overlay(image, amap, np.zeros_like(mask), threshold=amap.max() + 1, ax=ax)
    assert len(ax.collections) == 0  # nothing to outline
    assert len(legend_texts(ax)) == 2


def test_overlay_outline_is_closed_on_the_image_border(ax):
    image, _, amap = blob_example()
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, :5] = True  # touches the left, top and bottom borders
    plot_anomaly_overlay(image, amap, mask, ax=ax)
    (paths,) = [c.get_paths() for c in ax.collections]
    vertices = np.concatenate([p.vertices for p in paths])
    assert vertices[:, 0].min() == pytest.approx(-0.5)  # the image's left edge
    assert vertices[:, 0].max() == pytest.approx(4.5)
    assert vertices[:, 1].min() == pytest.approx(-0.5)
    assert vertices[:, 1].max() == pytest.approx(47.5)


def test_overlay_reads_image_and_mask_paths(ax, tmp_path):
    image, mask, amap = blob_example()
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    plot_anomaly_overlay(tmp_path / "image.png", amap, str(tmp_path / "mask.png"), ax=ax)
    np.testing.assert_array_equal(ax.images[0].get_array(), image)
    assert len(ax.collections) == 1


def test_overlay_uses_current_axes_by_default():
    image, _, amap = blob_example()
    fig, ax = plt.subplots()
    assert plot_anomaly_overlay(image, amap) is ax


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(anomaly_map=np.zeros((48, 40))),
         r"anomaly_map has shape \(48, 40\) but image has shape \(48, 48\)"),
        (dict(anomaly_map=np.zeros((1, 48, 48))), r"shape \(1, 48, 48\).*not a batch"),
        (dict(mask=np.zeros((40, 48), dtype=bool)),
         r"mask has shape \(40, 48\) but image has shape \(48, 48\)"),
        (dict(mask=np.full((48, 48), 2)), "only 0 .* and 1"),
        (dict(image=np.zeros((2, 48, 48, 3), dtype=np.uint8)), r"shape \(2, 48, 48, 3\).*not a batch"),
        (dict(image=np.full((48, 48), 2.0)), r"float pixel values in \[2, 2\]"),
        (dict(image=np.zeros((48, 48), dtype=np.int64)), "astype"),
        (dict(anomaly_map=np.full((48, 48), np.nan)), "NaN"),
        (dict(threshold=float("nan")), "threshold must be a finite number"),
        (dict(predicted_mask=np.zeros((40, 48), dtype=bool)), r"predicted_mask has shape \(40, 48\)"),
        (dict(predicted_mask=np.zeros((48, 48), dtype=bool), threshold=1.0), "not both"),
        (dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
    ],
)
def test_overlay_errors(ax, kwargs, match):
    image, mask, amap = blob_example()
    args = dict(image=image, anomaly_map=amap, mask=mask)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        plot_anomaly_overlay(**args, ax=ax)


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    image, _, amap = blob_example()
    with pytest.raises(ImportError, match=r'pip install "skpadim\[plot\]"'):
        plot_anomaly_overlay(image, amap)


# --------------------------------------------------------------------------
# plot_detection
# --------------------------------------------------------------------------
def with_defect(image):
    out = image.copy()
    out[10:20, 10:20] = 0
    return out


class PeakDetector:
    """Fitted stand-in: the map is the image itself, scored by its maximum."""

    def __init__(self, offset):
        self.offset_ = offset

    def anomaly_map(self, X):
        return np.asarray(X, dtype=np.float64)

    def score_samples(self, X):
        return -np.asarray(X, dtype=np.float64).max(axis=(1, 2))

    def predict(self, X):
        return np.where(self.score_samples(X) < self.offset_, -1, 1)


@pytest.mark.parametrize("peak, verdict, n_outlines", [
    (0.5, "normal", 0), (0.6, "normal", 1), (0.7, "anomalous", 1),
])
def test_plot_detection_uses_minus_offset_as_threshold(ax, peak, verdict, n_outlines):
    detector = PeakDetector(offset=-0.6)
    image = np.zeros((16, 16))
    image[4:8, 4:8] = peak
    plot_detection(detector, image, ax=ax)
    assert legend_texts(ax) == ["map ≥ 0.6 (flagged)"]
    assert ax.get_title().startswith(verdict)
    assert (verdict == "anomalous") == (detector.predict(image[None])[0] == -1)
    assert len(ax.collections) == n_outlines  # map >= 0.6 outlined in red
    np.testing.assert_array_equal(ax.images[1].get_array(), image)


def test_plot_detection_with_a_fitted_padim_on_an_image_path(ax, fitted, images, tmp_path):
    image = with_defect(images[0])
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[10:20, 10:20] = True
    Image.fromarray(image).save(tmp_path / "defect.png")
    plot_detection(fitted, str(tmp_path / "defect.png"), mask, ax=ax)
    assert fitted.predict(image[None])[0] == -1
    assert ax.get_title().startswith("anomalous")
    assert legend_texts(ax) == ["defect (ground truth)", "defect regions (predicted)"]
    assert len(ax.collections) == 2
    amap = fitted.anomaly_map(image[None])[0]
    np.testing.assert_allclose(ax.images[1].get_array(), amap)
    # The red outline is the detector's mask, not the map above the image threshold.
    predicted = fitted.anomaly_mask(image[None])[0]
    assert not np.array_equal(predicted, amap >= -fitted.offset_)
    padded = np.pad(predicted, 1)
    for x, y in np.concatenate([p.vertices for p in ax.collections[1].get_paths()]) + 1:
        # Each vertex lies halfway between a pixel of the mask and one outside it.
        (x0, y0), (x1, y1) = np.floor([x, y]).astype(int), np.ceil([x, y]).astype(int)
        assert padded[y0, x0] != padded[y1, x1], (x, y)


def test_plot_detection_needs_a_fitted_detector(ax, images):
    from sklearn.exceptions import NotFittedError

    from skpadim import PadimDetector

    with pytest.raises(NotFittedError):
        plot_detection(PadimDetector(), images[0], ax=ax)


# --------------------------------------------------------------------------
# plot_roc
# --------------------------------------------------------------------------
def test_plot_roc_legend_limits_and_curve(ax, tmp_path):
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40, int), np.ones(20, int)]
    scores = rng.normal(size=60) + 1.5 * y
    auroc = metrics.image_auroc(y, scores)
    plot_roc(y, scores, ax=ax, label="padim")
    assert legend_texts(ax) == [f"padim (AUROC = {auroc:.3f})"]
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1)
    chance, curve = ax.lines
    assert chance.get_gid() == "chance"
    x, yy = curve.get_data()
    assert (x[0], yy[0], x[-1], yy[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(yy, x) == pytest.approx(auroc)
    path = tmp_path / "roc.png"
    ax.figure.savefig(path, dpi=50)
    check_png(path)


def test_plot_roc_compares_curves_on_one_axes_and_reads_sklearn_labels(ax):
    y01 = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    plot_roc(y01, scores, ax=ax)
    plot_roc(np.where(y01 == 1, -1, 1), -scores, ax=ax, label="reversed")
    assert len(ax.lines) == 3  # one chance line, two curves
    assert legend_texts(ax) == ["AUROC = 0.750", "reversed (AUROC = 0.250)"]


def test_plot_roc_errors(ax):
    with pytest.raises(ValueError, match="same length"):
        plot_roc([0, 1, 1], [0.1, 0.2], ax=ax)
    with pytest.raises(ValueError, match="both anomalous and normal"):
        plot_roc([0, 0], [0.1, 0.2], ax=ax)


# --------------------------------------------------------------------------
# plot_pro and metrics.pro_curve
# --------------------------------------------------------------------------
def random_masks_and_maps(n=6, size=24, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    masks[1, 2:6, 3:9] = True
    masks[2, 10:20, 10:12] = True
    masks[2, 0:2, 20:24] = True
    masks[4, 15:23, 1:8] = True
    maps = rng.random((n, size, size)) + 0.8 * masks
    return masks, maps


@pytest.mark.parametrize("n_bins", [None, 64])
def test_pro_curve_matches_aupro_and_its_definition(n_bins):
    masks, maps = random_masks_and_maps()
    fpr, pro, thresholds = metrics.pro_curve(masks, maps, n_bins=n_bins)
    assert fpr.shape == pro.shape == thresholds.shape
    assert thresholds[0] == np.inf and np.all(np.diff(thresholds) < 0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    assert fpr[-1] == pytest.approx(1) and pro[-1] == pytest.approx(1)
    from skpadim._trapezoid import area, cut

    for limit in (0.05, 0.3, 1.0):
        value = area(*cut(fpr, pro, limit)) / limit
        assert value == pytest.approx(metrics.aupro(masks, maps, limit, n_bins=n_bins), abs=1e-12)
    if n_bins is None:  # brute force at a few thresholds
        from scipy import ndimage

        regions = [(i, r) for i in range(len(masks))
                   for lab in [ndimage.label(masks[i], np.ones((3, 3)))[0]]
                   for r in [lab == k for k in range(1, lab.max() + 1)]]
        for k in (1, 50, 500, len(thresholds) - 1):
            t = thresholds[k]
            assert fpr[k] == pytest.approx(np.mean(maps[~masks] >= t))
            assert pro[k] == pytest.approx(np.mean([np.mean(maps[i][r] >= t) for i, r in regions]))


def test_plot_pro_legend_limits_and_end_point(ax, tmp_path):
    masks, maps = random_masks_and_maps()
    plot_pro(masks, maps, ax=ax, fpr_limit=0.2, label="padim")
    value = metrics.aupro(masks, maps, 0.2)
    assert legend_texts(ax) == [f"padim (AUPRO@0.2 = {value:.3f})"]
    assert ax.get_xlim() == (0, 0.2) and ax.get_ylim() == (0, 1)
    (curve,) = ax.lines
    x, y = curve.get_data()
    assert (x[0], y[0]) == (0, 0) and x[-1] == pytest.approx(0.2)
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)
    assert np.trapezoid(y, x) / 0.2 == pytest.approx(value)
    path = tmp_path / "pro.png"
    ax.figure.savefig(path, dpi=50)
    check_png(path)


def test_plot_pro_thins_long_curves(ax):
    masks, maps = random_masks_and_maps(n=40, size=64)  # 163840 distinct scores
    plot_pro(masks, maps, ax=ax)
    x, y = ax.lines[0].get_data()
    assert len(x) <= 2003
    assert np.trapezoid(y, x) / 0.3 == pytest.approx(metrics.aupro(masks, maps), abs=1e-3)


@pytest.mark.parametrize("fpr_limit", [0, 1.5, True, "0.3"])
def test_plot_pro_rejects_bad_fpr_limit(ax, fpr_limit):
    masks, maps = random_masks_and_maps()
    with pytest.raises(ValueError, match="fpr_limit must be a number in"):
        plot_pro(masks, maps, fpr_limit=fpr_limit, ax=ax)


def test_plot_pro_shape_mismatch(ax):
    masks, maps = random_masks_and_maps()
    with pytest.raises(ValueError, match="masks and maps must hold the same number"):
        plot_pro(masks[:2], maps, ax=ax)
