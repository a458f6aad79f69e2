"""Persistence of fitted detectors: shared by pickling and the safe format.

:func:`export_state` turns a fitted detector's ``__dict__`` into plain numpy
arrays plus JSON-representable metadata, and :func:`import_state` rebuilds
the fitted attributes from them. Pickling (:func:`slim_state` /
:func:`restore_state`, used by ``__getstate__``/``__setstate__``) and the
pickle-free format of :mod:`skpadim._safe_io` both go through this pair.

What is saved of a fitted detector:

* the running statistics, with the (symmetric) sum of outer products packed
  as its upper triangle; ``mean_`` and ``precision_`` are recomputed from
  them on load (float64 Cholesky, deterministic), so the file holds one
  d x d triangle per position instead of two full matrices;
* for a torchvision backbone, its name and only the weights of the modules
  that run up to the last tapped layer (no download is needed to load);
  a custom module is pickled whole with its class by pickling, and saved as
  its weights only by the safe format;
* no calibration sample: a ``partial_fit`` after loading calibrates the
  threshold on the new images only.

Loading a detector fitted on a GPU on a machine without one falls back to the
CPU with a warning.
"""

import contextlib
import copy
import warnings

import numpy as np
import torch

from . import params as _params
from .calibration import Reservoir
from .embedding import PatchEmbedding
from .taps import LayerTaps
from .gaussian import GaussianStats

# Rebuilt on load from the exported state.
_DERIVED = ("_taps", "_embedding", "_cache", "_reservoir", "mean_", "precision_", "backbone_")
# Exported by export_state (arrays or metadata).
EXPORTED = (
    "_stats", "device_", "feature_index_", "layers_", "feature_map_shape_", "n_samples_seen_",
    "offset_", "n_channels_in_", "_shapes", "_used_keys", "_image_size", "_norm", "_epsilon",
    "_sigma", "_calibration",
) + _DERIVED
BACKBONE_PREFIX = "backbone."


@contextlib.contextmanager
def modules_run(model):
    """Record, into the yielded set, the names of ``model``'s modules that run."""
    ran = set()
    names = {id(m): n for n, m in model.named_modules()}
    handles = [
        m.register_forward_pre_hook(lambda mod, args: ran.add(names[id(mod)]))
        for m in model.modules()
    ]
    try:
        yield ran
    finally:
        for h in handles:
            h.remove()


def used_state_keys(model, ran):
    """State-dict keys of the modules named in ``ran`` (see :func:`modules_run`)."""
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


def _pair(x):
    return None if x is None else tuple(x)


def _weights(model, keys):
    sd = model.state_dict()
    out = {}
    for k in keys:
        v = sd[k]
        if not torch.is_tensor(v) or v.dtype in (torch.bfloat16,) or v.is_complex():
            desc = v.dtype if torch.is_tensor(v) else type(v).__name__
            raise ValueError(
                f"The backbone's state_dict entry {k!r} ({desc}) cannot be stored as a "
                "numpy array; convert the module to float32 (module.float()) before fitting."
            )
        out[BACKBONE_PREFIX + k] = v.detach().cpu().numpy()
    return out


def export_state(state, *, module_weights=False):
    """Split a fitted detector's ``__dict__`` into ``(arrays, meta)``.

    ``arrays`` maps names to numeric numpy arrays; ``meta`` holds ints,
    floats, strings, lists and None only (JSON-representable). Backbone
    weights are arrays named ``"backbone.<key>"``: the used keys for a
    torchvision name, every key of a custom module when ``module_weights``.
    Constructor parameters and ``_frozen``/``_rng`` are not included.
    """
    stats = state["_stats"]
    arrays = {
        "stats.shift": stats.shift.cpu().numpy(),
        "stats.total": stats.total.cpu().numpy(),
        "stats.outer_upper": _pack(stats.outer),
        "feature_index_": np.asarray(state["feature_index_"]),
        "calibration": np.asarray(state["_calibration"], dtype=np.float64),
    }
    model = state["backbone_"]
    if isinstance(state["backbone"], str):
        arrays.update(_weights(model, state["_used_keys"]))
    elif module_weights:
        arrays.update(_weights(model, list(model.state_dict())))
    norm = state["_norm"]
    meta = {
        "n": int(stats.n),
        "layers_": list(state["layers_"]),
        "feature_map_shape_": [int(v) for v in state["feature_map_shape_"]],
        "n_samples_seen_": int(state["n_samples_seen_"]),
        "offset_": float(state["offset_"]),
        "n_channels_in_": None if state["n_channels_in_"] is None else int(state["n_channels_in_"]),
        "device_": str(state["device_"]),
        "shapes": [[int(v) for v in s] for s in state["_shapes"]],
        "used_keys": None if state["_used_keys"] is None else list(state["_used_keys"]),
        "image_size": [int(v) for v in state["_image_size"]],
        "norm": None if norm is None else [list(map(float, norm[0])), list(map(float, norm[1]))],
        "epsilon": float(state["_epsilon"]),
        "sigma": float(state["_sigma"]),
    }
    return arrays, meta


def backbone_weights(arrays):
    """The ``"backbone.<key>"`` arrays of ``arrays`` as a state_dict of tensors."""
    n = len(BACKBONE_PREFIX)
    return {k[n:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(BACKBONE_PREFIX)}


def load_weights(model, weights, *, strict, source):
    """Copy ``weights`` into ``model``; ValueError naming ``source`` on any mismatch.

    Without ``strict``, ``weights`` may hold a subset of the model's keys.
    """
    sd = model.state_dict()
    problems = [f"unexpected key {k!r}" for k in weights if k not in sd]
    problems += [
        f"{k!r} has shape {tuple(v.shape)}, the backbone's has {tuple(sd[k].shape)}"
        for k, v in weights.items()
        if k in sd and tuple(v.shape) != tuple(sd[k].shape)
    ]
    if strict:
        problems += [f"missing key {k!r}" for k in sd if k not in weights]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(
            f"The backbone weights in {source} do not match the backbone: "
            f"{'; '.join(problems[:3])}{more}."
        )
    model.load_state_dict(weights, strict=False)
    return model


def torchvision_backbone(name, weights, source):
    """Rebuild torchvision model ``name`` (checked against torchvision's list) with ``weights``."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"{source} names the backbone {name!r}, which is not a torchvision "
            "classification model here (torchvision.models.list_models(module="
            "torchvision.models)); a newer torchvision may be needed."
        )
    with torch.random.fork_rng(devices=[]):  # overwritten below; leave torch's RNG alone
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None)
    return load_weights(model, weights, strict=False, source=source)


def import_state(arrays, meta, model, device):
    """Inverse of :func:`export_state`: the fitted attributes, as a dict.

    ``model`` is the backbone module, already holding its weights.
    """
    model = model.eval().requires_grad_(False).to(device)
    d = arrays["stats.shift"].shape[1]
    stats = GaussianStats(
        meta["n"],
        torch.from_numpy(arrays["stats.shift"]),
        torch.from_numpy(arrays["stats.total"]),
        _unpack(arrays["stats.outer_upper"], d),
    )
    layers = tuple(meta["layers_"])
    shapes = [tuple(s) for s in meta["shapes"]]
    feature_index = arrays["feature_index_"]
    norm = meta["norm"]
    return {
        "_stats": stats.to(device if device.type != "mps" else torch.device("cpu")),
        "backbone_": model,
        "device_": device,
        "_taps": LayerTaps(model, layers),
        "_embedding": PatchEmbedding(shapes, feature_index, device),
        "_reservoir": Reservoir(),
        "_cache": None,
        "mean_": stats.mean().numpy(),
        "precision_": stats.precision(meta["epsilon"]).numpy(),
        "feature_index_": feature_index,
        "layers_": layers,
        "feature_map_shape_": tuple(meta["feature_map_shape_"]),
        "n_samples_seen_": meta["n_samples_seen_"],
        "offset_": meta["offset_"],
        "n_channels_in_": meta["n_channels_in_"],
        "_shapes": shapes,
        "_used_keys": None if meta["used_keys"] is None else list(meta["used_keys"]),
        "_image_size": tuple(meta["image_size"]),
        "_norm": None if norm is None else (tuple(norm[0]), tuple(norm[1])),
        "_epsilon": meta["epsilon"],
        "_sigma": meta["sigma"],
        "_calibration": arrays["calibration"],
    }


def load_device(saved, param):
    """The device for a loaded detector: ``param`` resolved, or the CPU with a warning."""
    try:
        return _params.resolve_device(param)
    except ValueError:
        warnings.warn(
            f"This detector was fitted on {saved!r}, which is not available here; "
            "using the CPU. Set device='cpu' to silence this warning.",
            stacklevel=4,
        )
        return torch.device("cpu")


def slim_state(state):
    """Turn ``__dict__`` of a fitted detector into a compact picklable dict."""
    if "_stats" not in state:
        return state
    arrays, meta = export_state(state)
    out = {k: v for k, v in state.items() if k not in EXPORTED}
    out["_exported"] = {"arrays": arrays, "meta": meta}
    if not isinstance(state["backbone"], str):
        out["_backbone_module"] = copy.deepcopy(state["backbone_"]).cpu()
    return out


def restore_state(state, est):
    """Inverse of :func:`slim_state`: rebuild modules, statistics and fitted arrays."""
    if "_exported" not in state:
        return state
    state = dict(state)
    exported = state.pop("_exported")
    arrays, meta = exported["arrays"], exported["meta"]
    model = state.pop("_backbone_module", None)
    device = load_device(meta["device_"], state["device"])
    if model is None:
        model = torchvision_backbone(state["backbone"], backbone_weights(arrays), "the pickle")
    state.update(import_state(arrays, meta, model, device))
    return state
