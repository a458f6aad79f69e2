"""Pickle support: small files that load offline, on CPU, with identical scores.

What is saved of a fitted detector:

* the running statistics, with the (symmetric) sum of outer products packed
  as its upper triangle; ``mean_`` and ``precision_`` are recomputed from
  them on load (float64 Cholesky, deterministic), so the file holds one
  d x d triangle per position instead of two full matrices;
* for a torchvision backbone, its name and only the weights of the modules
  that run up to the last tapped layer (no download is needed to load);
  a custom module is saved whole (pickled with its class);
* no calibration sample: a ``partial_fit`` after loading calibrates the
  threshold on the new images only.

Loading a detector fitted on a GPU on a machine without one falls back to the
CPU with a warning.
"""

import copy
import warnings

import numpy as np
import torch

from . import _params
from ._calibration import Reservoir
from ._features import LayerTaps, PatchEmbedding
from ._gaussian import GaussianStats

_DROP = ("_taps", "_embedding", "_cache", "_reservoir", "mean_", "precision_", "backbone_")


def used_state_keys(model, taps, image_size, device):
    """State-dict keys of the modules that run up to the last tapped layer."""
    ran = set()
    names = {id(m): n for n, m in model.named_modules()}
    handles = [
        m.register_forward_pre_hook(lambda mod, args: ran.add(names[id(mod)]))
        for m in model.modules()
    ]
    try:
        with torch.inference_mode():
            taps(torch.zeros(1, 3, *image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return [k for k in model.state_dict() if (k.rpartition(".")[0]) in ran]


def _pack(outer):
    d = outer.shape[-1]
    iu = torch.triu_indices(d, d)
    return outer[:, iu[0], iu[1]].cpu().numpy()


def _unpack(packed, d):
    iu = torch.triu_indices(d, d)
    p = torch.from_numpy(np.ascontiguousarray(packed))
    out = torch.zeros(p.shape[0], d, d, dtype=p.dtype)
    out[:, iu[0], iu[1]] = p
    out[:, iu[1], iu[0]] = p
    return out


def slim_state(state):
    """Turn ``__dict__`` of a fitted detector into a compact picklable dict."""
    if "_stats" not in state:
        return state
    out = {k: v for k, v in state.items() if k not in _DROP}
    stats = state["_stats"]
    out["_stats"] = {
        "n": stats.n,
        "shift": stats.shift.cpu().numpy(),
        "total": stats.total.cpu().numpy(),
        "outer_upper": _pack(stats.outer),
    }
    model = state["backbone_"]
    if isinstance(state["backbone"], str):
        sd = model.state_dict()
        out["_backbone_state"] = {k: sd[k].detach().cpu().numpy() for k in state["_used_keys"]}
    else:
        out["_backbone_state"] = copy.deepcopy(model).cpu()
    out["device_"] = str(state["device_"])
    return out


def _load_device(saved, param):
    try:
        return _params.resolve_device(param)
    except ValueError:
        warnings.warn(
            f"This detector was fitted on {saved!r}, which is not available here; "
            "using the CPU. Set device='cpu' to silence this warning.",
            stacklevel=3,
        )
        return torch.device("cpu")


def restore_state(state, est):
    """Inverse of :func:`slim_state`: rebuild modules, statistics and fitted arrays."""
    if "_backbone_state" not in state:
        return state
    state = dict(state)
    device = _load_device(state["device_"], state["device"])
    saved = state.pop("_backbone_state")
    if isinstance(saved, dict):
        import torchvision

        model = torchvision.models.get_model(state["backbone"], weights=None)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in saved.items()}, strict=False)
    else:
        model = saved
    model = model.eval().requires_grad_(False).to(device)
    s = state["_stats"]
    d = s["shift"].shape[1]
    stats = GaussianStats(
        s["n"],
        torch.from_numpy(s["shift"]),
        torch.from_numpy(s["total"]),
        _unpack(s["outer_upper"], d),
    )
    state["_stats"] = stats.to(device if device.type != "mps" else torch.device("cpu"))
    state["backbone_"] = model
    state["device_"] = device
    state["_taps"] = LayerTaps(model, state["layers_"])
    state["_embedding"] = PatchEmbedding(state["_shapes"], state["feature_index_"], device)
    state["_reservoir"] = Reservoir()
    state["_cache"] = None
    state["mean_"] = stats.mean().numpy()
    state["precision_"] = stats.precision(state["_epsilon"]).numpy()
    return state
