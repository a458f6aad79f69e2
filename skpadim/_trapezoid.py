"""Areas under piecewise-linear curves, shared by the metrics and the plots.

:func:`skpadim.metrics.aupro` integrates the PRO curve up to ``fpr_limit``
and :func:`skpadim.plot.plot_pro` draws the same piece of it: both cut the
curve here, so that the area in the plot's legend is the metric's.
"""

import numpy as np


def cut(x, y, x_max):
    """The points of a curve with ``x <= x_max``, ending at ``x_max``.

    ``x`` is non-decreasing and starts at or below ``x_max``; where it goes
    beyond ``x_max``, ``y`` is linearly interpolated at ``x_max``.

    Examples
    --------
    >>> xs, ys = cut(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0]), 0.25)
    >>> xs.tolist(), ys.tolist()
    ([0.0, 0.25], [0.0, 0.5])
    """
    end = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:end], y[:end]
    if xs[-1] < x_max and end < x.size:
        frac = (x_max - x[end - 1]) / (x[end] - x[end - 1])
        xs = np.append(xs, x_max)
        ys = np.append(ys, y[end - 1] + frac * (y[end] - y[end - 1]))
    return xs, ys


def area(x, y):
    """Trapezoidal area under ``y(x)``.

    Examples
    --------
    >>> area(np.array([0.0, 0.25]), np.array([0.0, 0.5]))
    0.0625
    """
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
