"""matplotlib, imported on first use, and the axes to draw on."""


def pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "skpadim.plot needs matplotlib, which is not installed; install it with "
            'pip install "skpadim[plot]" (or pip install matplotlib).'
        ) from exc
    return plt


def get_axes(ax):
    """``ax``, or the current axes (``plt.gca()``) when None."""
    return pyplot().gca() if ax is None else ax
