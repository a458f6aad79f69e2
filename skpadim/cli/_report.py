"""Pictures (overlay PNGs) and the self-contained HTML report of ``skpadim evaluate``.

Figures are drawn with :mod:`skpadim.plot` on :class:`matplotlib.figure.Figure`
objects (no pyplot state, no display needed) and embedded in the report as
base64 PNG data URIs, so the report is one file that can be mailed or
archived. A small script at the end of the page records, once the page has
loaded, how many of its images decoded (``data-images-loaded`` on ``<body>``)
and how many table rows it holds; the tests read them from a headless browser.
"""

import base64
import datetime
import html
import io
import os

import numpy as np

from .._install import extra
from ._common import CLIError
from ._output import write_text

_PLOT_HINT = f"{extra('plot')} (or pip install matplotlib)"
_DPI = 100
# Overlay titles: the narrowest picture that has one, and the inches per character and per
# line of an 8-point title (generous: a wide character takes more than the average).
_TITLE_WIDTH = 2.4
_TITLE_CHAR = 0.075
_TITLE_LINE = 0.17


def require_matplotlib(what):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(f"{what} needs matplotlib; install it with {_PLOT_HINT}.") from None


def _figure(width_in, height_in):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in))


def _png(fig, dpi=100):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def heat_range(threshold):
    """The heat map's colour range, the same for every image: threshold in the middle."""
    if not np.isfinite(threshold) or threshold <= 0:
        return None, None
    return 0.5 * threshold, 1.5 * threshold


def overlay_png(image, amap, threshold, *, mask=None, side=None, title=None):
    """PNG bytes of :func:`overlay_figure`."""
    return _png(overlay_figure(image, amap, threshold, mask=mask, side=side, title=title), dpi=_DPI)


def overlay_figure(image, amap, threshold, *, mask=None, side=None, title=None):
    """An image with its heat map, flagged region (red) and defect (green), and a title.

    ``image`` is the decoded image (an array) or its file. The longest side
    of the picture is ``side`` pixels (default: the image's own, clipped to
    [256, 1024]). The title is wrapped to the picture's width, which is at
    least :data:`_TITLE_WIDTH` inches when there is one, so that a narrow
    image does not clip it.
    """
    import textwrap

    from .._images import read_image
    from ..plot import plot_anomaly_overlay

    if not isinstance(image, np.ndarray):
        image = read_image(image)
    h, w = image.shape[:2]
    side = side or min(max(max(h, w), 256), 1024)
    scale = side / max(h, w) / _DPI
    width, height = w * scale, h * scale  # inches of the picture itself
    lines = []
    if title:
        width_in = max(width, _TITLE_WIDTH)
        lines = textwrap.wrap(title, width=max(8, int(width_in / _TITLE_CHAR)))
    fig_w = max(width, _TITLE_WIDTH) if lines else width
    top = _TITLE_LINE * len(lines) + (0.08 if lines else 0.0)
    fig = _figure(fig_w, height + top)
    ax = fig.add_axes([(fig_w - width) / 2 / fig_w, 0, width / fig_w, height / (height + top)])
    vmin, vmax = heat_range(threshold)
    plot_anomaly_overlay(image, amap, mask, threshold=threshold, ax=ax, vmin=vmin, vmax=vmax)
    if lines:
        ax.set_title("\n".join(lines), fontsize=8)
    return fig


def _data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png, alt, cls=""):
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{_data_uri(png)}">'


# ---------------------------------------------------------------- curves

def roc_png(labels, scores):
    from ..plot import plot_roc

    fig = _figure(4.2, 4.2)
    ax = fig.add_subplot()
    plot_roc(labels, scores, ax=ax)
    fig.tight_layout()
    return _png(fig)


def pro_png(masks, maps, fpr_limit):
    from ..plot import plot_pro

    fig = _figure(4.2, 4.2)
    ax = fig.add_subplot()
    plot_pro(masks, maps, fpr_limit=fpr_limit, ax=ax)
    fig.tight_layout()
    return _png(fig)


def histogram_png(labels, scores, threshold):
    fig = _figure(4.6, 4.2)
    ax = fig.add_subplot()
    scores = np.asarray(scores)
    bins = np.histogram_bin_edges(scores, bins=min(40, max(10, len(scores) // 3)))
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, color="tab:blue", label="good")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, color="tab:red", label="defective")
    ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.4g}")
    ax.set_xlabel("Anomaly score (maximum of the anomaly map)")
    ax.set_ylabel("Images")
    ax.set_title("Scores of good and defective images")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------ html

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1100px;padding:0 16px;color:#1d232a;background:#fff;line-height:1.45}
h1{margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #dde;padding-bottom:4px}
.sub{color:#5a6672;margin-top:0}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #d5dbe1;padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:#f1f4f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.metrics td.num{font-size:1.25em;font-weight:600}.help{color:#5a6672;font-size:.9em}
.verdict{background:#f6f8fa;border-left:4px solid #4a7bd0;padding:8px 12px}
.curves{display:flex;flex-wrap:wrap;gap:12px}.curves img{width:340px;border:1px solid #e3e7eb}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
figure{margin:0;border:1px solid #e3e7eb;padding:6px;background:#fafbfc}
figure img{width:100%;height:auto;display:block}
figcaption{font-size:.8em;word-break:break-all;margin-top:4px}
.bad{color:#b3261e;font-weight:600}.ok{color:#1e7b34;font-weight:600}.note{color:#5a6672}
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  }
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesLoaded = ok;
  document.body.dataset.tableRows = document.querySelectorAll("table tbody tr").length;
});
"""


def _table(header, rows, cls=""):
    head = ""
    if header:
        head = "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def _td(value, num=False):
    return f'<td class="num">{html.escape(value)}</td>' if num else f"<td>{html.escape(value)}</td>"


def _fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def _pct(k, n):
    return f"{k} of {n} ({100.0 * k / n:.1f} %)" if n else "0 of 0"


def _metrics_section(ev):
    rows = [
        ("Image AUROC", _fmt(ev["image_auroc"]),
         "Probability that a random defective image scores above a random good one "
         "(1 = perfect ranking, 0.5 = chance)."),
        ("Pixel AUROC", _fmt(ev["pixel_auroc"]),
         "The same over pixels: do defect pixels score above good pixels?"),
        (f"AUPRO (FPR ≤ {ev['fpr_limit']:g})", _fmt(ev["aupro"]),
         "Mean fraction of each defect region found, averaged over false-positive rates up to the limit; "
         "small defects count as much as large ones."),
        ("F1-max (images)", _fmt(ev["f1_max"]),
         "Best F1 over all thresholds on image scores; reached with "
         f"--threshold {ev['suggested_threshold']:.6g}."),
    ]
    table = _table(
        ["Metric", "Value", "Meaning"],
        [[_td(a), _td(b, num=True), f'<td class="help">{html.escape(c)}</td>'] for a, b, c in rows],
        cls="metrics",
    )
    good, bad = ev["labels"] == 0, ev["labels"] == 1
    flagged = ev["flagged"]
    fa, miss = int(np.sum(flagged & good)), int(np.sum(~flagged & bad))
    cls_fa = "ok" if fa == 0 else "bad"
    cls_miss = "ok" if miss == 0 else "bad"
    verdict = (
        f'<p class="verdict">At the threshold <b>{ev["threshold"]:.4g}</b> '
        f'({html.escape(ev["threshold_source"])}): '
        f'<span class="{cls_fa}">{_pct(fa, int(good.sum()))} good images flagged</span> (false alarms), '
        f'<span class="{cls_miss}">{_pct(miss, int(bad.sum()))} defective images missed</span>. '
        f"An image is flagged when its score is above the threshold; to use the F1-optimal one, run "
        f"<code>skpadim predict MODEL IMAGES --threshold {ev['suggested_threshold']:.6g}</code>.</p>"
    )
    note = ""
    if ev["pixel_note"]:
        note = f'<p class="note">{html.escape(ev["pixel_note"])}</p>'
    return f"<h2>Summary</h2>{table}{verdict}{note}"


def _defect_section(ev):
    from ..metrics import image_auroc

    labels, scores, types, flagged = ev["labels"], ev["scores"], ev["defect_types"], ev["flagged"]
    good = labels == 0
    rows = []
    for t in sorted(set(types[labels == 1])):
        sel = types == t
        both = sel | good
        auc = image_auroc(labels[both], scores[both]) if good.any() else None
        missed = int(np.sum(~flagged & sel))
        rows.append([_td(t), _td(str(int(sel.sum())), True), _td(f"{missed} missed", True),
                     _td(_fmt(auc), True), _td(f"{np.median(scores[sel]):.4g}", True)])
    rows.append([_td("good"), _td(str(int(good.sum())), True),
                 _td(f"{int(np.sum(flagged & good))} flagged", True), _td("", True),
                 _td(f"{np.median(scores[good]):.4g}", True)])
    table = _table(["Type", "Images", "At the threshold", "Image AUROC vs good", "Median score"], rows)
    return f"<h2>Per defect type</h2>{table}"


def _thumbs(ev, idx, heading, explain):
    if len(idx) == 0:
        return ""
    cells = []
    for i in idx:
        png = overlay_png(ev["images"][i], ev["maps"][i], ev["threshold"], mask=ev["masks"][i], side=320)
        verdict = "flagged" if ev["flagged"][i] else "not flagged"
        caption = (f"{html.escape(ev['names'][i])}<br>score <b>{ev['scores'][i]:.4g}</b> · "
                   f"{verdict} · {html.escape(str(ev['defect_types'][i]))}")
        image = _img(png, ev["names"][i], "thumb")
        cells.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
    return (f'<h2>{html.escape(heading)}</h2><p class="note">{html.escape(explain)}</p>'
            f'<div class="grid">{"".join(cells)}</div>')


def _failures_section(ev):
    failures = ev["failures"]
    if not failures:
        return ""
    rows = [[_td(f.path), _td(f.reason)] for f in failures]
    return (
        f'<h2 id="unreadable">Files left out</h2><p class="bad">{len(failures)} files could not be '
        "read, or have a size the model cannot take. Their images are left out of every number "
        "and picture of this report (an unreadable mask leaves its image out of the pixel "
        "metrics only).</p>"
        + _table(["File", "Reason"], rows, cls="failures")
    )


def _model_section(info):
    from ._describe import lines

    rows = [[f"<th>{html.escape(name)}</th>", _td(text)] for name, text in lines(info)]
    return "<h2>Model</h2>" + _table(None, rows)


def _left_out(ev):
    n = len(ev["failures"])
    return f', <a class="bad" href="#unreadable">{n} files left out</a>' if n else ""


def write_report(path, ev):
    """Write the HTML report of an evaluation ``ev`` (the dict built by ``skpadim evaluate``)."""
    from .. import __version__

    labels, scores = ev["labels"], ev["scores"]
    curves = [(roc_png(labels, scores), "ROC curve")]
    if ev["pixel_masks"] is not None:
        curves.append((pro_png(ev["pixel_masks"], ev["pixel_maps"], ev["fpr_limit"]), "PRO curve"))
    curves.append((histogram_png(labels, scores, ev["threshold"]), "Score histogram"))
    order = np.argsort(scores, kind="stable")
    k = ev["n_thumbnails"]
    worst_good = [i for i in order[::-1] if labels[i] == 0][:k]
    best_bad = [i for i in order if labels[i] == 1][:k]
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"skpadim evaluation: {os.path.basename(os.path.normpath(ev['data']))}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">Data <code>{html.escape(ev["data"])}</code> ({html.escape(ev["layout"])} layout, '
        f"{int((labels == 0).sum())} good and {int((labels == 1).sum())} defective images"
        f"{_left_out(ev)}) · "
        f'model <code>{html.escape(ev["model"])}</code> · {now} · skpadim {__version__}</p>',
        _metrics_section(ev),
        _failures_section(ev),
        _defect_section(ev),
        '<h2>Curves</h2><div class="curves">' + "".join(_img(png, alt) for png, alt in curves) + "</div>",
        _thumbs(ev, worst_good, "Good images that look most anomalous",
                "The good images with the highest scores: false alarms, or defects in the good set. "
                "Red outline: pixels above the threshold; the heat map runs from blue (half the "
                "threshold) to red (1.5 times the threshold), the same scale on every picture."),
        _thumbs(ev, best_bad, "Defective images that look most normal",
                "The defective images with the lowest scores: the defects the model finds hardest. "
                "Green outline: the ground-truth defect; red outline: pixels above the threshold."),
        _model_section(ev["info"]),
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    write_text(path, "\n".join(parts))
