"""How the work shows: named profiler ranges for each stage, and a progress bar."""

import torch

# The stages of fit and predict, in the order they run.
STAGES = (
    "decode", "backbone", "embedding", "reservoir", "update", "precision", "calibration",
    "mahalanobis", "maps",
)


def stage(name):
    """A ``torch.profiler.record_function`` range named ``skpadim.<name>``.

    The stages of fit and predict (:data:`STAGES`) show up under these names
    in a torch profiler trace; the benchmarks time them that way.
    """
    return torch.profiler.record_function(f"skpadim.{name}")


def progress_bar(total, desc, disable=False):
    """A bar over images (not batches) with the rate and the time left."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="img", dynamic_ncols=True, disable=disable,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} images "
        "[{elapsed} elapsed, {remaining} left, {rate_fmt}]",
    )
