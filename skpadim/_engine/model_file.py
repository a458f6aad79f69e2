"""A pickle-free file format for fitted detectors (``save`` / ``load``).

``joblib.load`` and ``pickle.load`` run code named in the file; a file from
:meth:`PadimDetector.save` holds data only and :meth:`PadimDetector.load`
never imports or calls anything the file names. The file is a zip archive
(numpy's ``.npz`` layout, uncompressed) with

* ``config.json``: format name and version, skpadim version, the
  constructor parameters that JSON can represent, the fitted state's
  metadata (:meth:`FittedState.to_arrays
  <skpadim._engine.state.FittedState.to_arrays>`) and the dtype, shape and
  SHA-256 of every array;
* ``config.sha256``: the SHA-256 of ``config.json``;
* one ``.npy`` member per array of the fitted state (written and read with
  ``allow_pickle=False``): running statistics and precisions (packed upper
  triangles), the channel subset, the calibration sample and scores, and
  the backbone weights.

Loading checks the format version, the config's hash, every array's dtype,
shape and hash, that the config holds exactly the expected keys and the
arrays exactly the expected names, and the consistency of the shapes, before
building anything; it refuses the file with a ValueError naming it
otherwise. The hashes catch corruption and accidental edits, not forgeries
(anyone can recompute them): what keeps a hostile file harmless is that
loading executes nothing from it, and sets nothing on the detector but its
constructor parameters and its fitted state.

A torchvision backbone is rebuilt from its name (checked against
``torchvision.models.list_models``) with ``weights=None`` and the saved
weights, and so is a backbone known by name (:mod:`.named`, e.g.
``"efficientnet-lite0"``, from its installed package). A custom module cannot
be rebuilt without running user code, so the caller passes it:
``PadimDetector.load(path, backbone=module)``; a copy of it receives the
saved weights (keys and shapes must match).

Files are written atomically: to a temporary file in the same directory,
flushed to disk, then renamed over the final name.
"""

import hashlib
import json
import numbers
import os
import warnings
import zipfile
import zlib

import numpy as np
import torch
from torch import nn

from .._atomic import write_atomic
from .._model_kind import EXPORTED, model_kind, wrong_loader
from . import named
from .persist import load_device
from .state import FittedState, InconsistentState

FORMAT = "skpadim-detector"
FORMAT_VERSION = 2
_CONFIG = "config.json"
_CONFIG_HASH = "config.sha256"
# Metadata key by which skpadim fit marked a named backbone it passed as a module (older files).
_CLI_MARKER = "cli_backbone_"
_CONFIG_KEYS = {"format", "format_version", "skpadim_version", "params", "unsaved_params", "state",
                "metadata", "arrays"}


class _NotJSON(TypeError):
    pass


# --------------------------------------------------------------- encoding

def _to_json(value):
    """JSON-representable form of a parameter value; tuples and dicts are tagged."""
    from torchvision.models import WeightsEnum

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, WeightsEnum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.tolist()
    if isinstance(value, tuple):
        return {"tuple": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _to_json(v) for k, v in value.items()}}
    raise _NotJSON(type(value).__name__)


def _from_json(value):
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"tuple"} and isinstance(value["tuple"], list):
            return tuple(_from_json(v) for v in value["tuple"])
        if set(value) == {"dict"} and isinstance(value["dict"], dict):
            return {k: _from_json(v) for k, v in value["dict"].items()}
        raise ValueError(f"unexpected object {sorted(value)!r}")
    return value


def _contiguous(arr):
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d arrays 0-d


def _sha256(arr):
    return hashlib.sha256(_contiguous(arr).data).hexdigest()


# ------------------------------------------------------------------ save

def save(est, state, path, metadata=None):
    """Write detector ``est`` with fitted ``state`` to ``path`` (see the module docstring)."""
    from .. import __version__

    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}.")
        try:
            json.dumps(metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-representable: {exc}") from None

    arrays, meta = state.to_arrays()
    params, unsaved = {}, []
    for name, value in est.get_params(deep=False).items():
        if name == "backbone" and isinstance(value, nn.Module):
            continue
        try:
            params[name] = _to_json(value)
        except _NotJSON:
            unsaved.append(name)
    if unsaved:
        warnings.warn(
            f"The parameters {unsaved} of this PadimDetector cannot be stored without "
            "pickle; the loaded detector has their default values (they only matter "
            "for a new fit).",
            UserWarning,
            stacklevel=3,
        )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "skpadim_version": __version__,
        "params": params,
        "unsaved_params": unsaved,
        "state": meta,
        "metadata": metadata,
        "arrays": {
            k: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256(a)}
            for k, a in arrays.items()
        },
    }
    blob = json.dumps(config, indent=1, sort_keys=True).encode("utf-8")

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr(_CONFIG, blob)
            zf.writestr(_CONFIG_HASH, hashlib.sha256(blob).hexdigest())
            for k, a in arrays.items():
                _write_array(zf, k, a)

    write_atomic(path, write)


def _write_array(zf, name, arr):
    with zf.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, _contiguous(arr), allow_pickle=False)


# ------------------------------------------------------------------ load

def _refuse(path, detail):
    return ValueError(f"Cannot load '{path}' as a skpadim detector: {detail}")


def _read_verified(path):
    """Return ``(config, arrays)`` after every integrity check."""
    kind = model_kind(path)
    if kind in EXPORTED:
        raise ValueError(wrong_loader(path, kind))
    with open(path, "rb") as f:  # FileNotFoundError etc. name the file already
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise _refuse(path, "it is not a zip archive (not a file from PadimDetector.save).")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated or damaged archive
        raise _refuse(path, f"the file is corrupt or truncated ({type(exc).__name__}: {exc}).") from None
    with npz:
        try:
            members = set(npz.zip.namelist())
            if _CONFIG not in members or _CONFIG_HASH not in members:
                raise _refuse(path, "it has no config.json/config.sha256 (not a file from PadimDetector.save).")
            blob = npz.zip.read(_CONFIG)
            stored_hash = npz.zip.read(_CONFIG_HASH).decode("ascii", "replace").strip()
            try:
                config = json.loads(blob.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise _refuse(path, f"config.json is corrupt ({exc}).") from None
            _check_version(path, config)
            if hashlib.sha256(blob).hexdigest() != stored_hash:
                raise _refuse(path, "config.json does not match its SHA-256 (the file was modified or corrupted).")
            specs = config.get("arrays")
            if not isinstance(specs, dict):
                raise _refuse(path, "config.json has no array list.")
            expected = {k + ".npy" for k in specs} | {_CONFIG, _CONFIG_HASH}
            if members != expected:
                odd = sorted(members ^ expected)[:3]
                raise _refuse(path, f"its members do not match config.json (e.g. {odd}).")
            arrays = {k: _read_array(path, npz, k, spec) for k, spec in specs.items()}
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, TypeError) as exc:
            raise _refuse(path, f"the file is corrupt or truncated ({type(exc).__name__}: {exc}).") from None
    return config, arrays


def _check_version(path, config):
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise _refuse(path, "config.json does not describe a skpadim detector.")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _refuse(path, f"invalid format_version {version!r}.")
    if version < FORMAT_VERSION:
        raise _refuse(
            path,
            f"it was written by skpadim {config.get('skpadim_version')!r} in format version "
            f"{version}, which this skpadim no longer reads (format {FORMAT_VERSION} stores "
            "the calibration sample and the precisions). Fit the detector again and save it.",
        )
    if version > FORMAT_VERSION:
        from .. import __version__
        from .._install import extra

        raise _refuse(
            path,
            f"it was written by skpadim {config.get('skpadim_version')!r} in format version "
            f"{version}, and this skpadim ({__version__}) reads format versions up to "
            f"{FORMAT_VERSION}. Upgrade skpadim ({extra('torch', upgrade=True)}) to load it.",
        )


def _read_array(path, npz, name, spec):
    try:
        arr = npz[name]
    except ValueError as exc:  # object arrays (allow_pickle=False), bad headers
        raise _refuse(path, f"array {name!r} cannot be read without pickle ({exc}).") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise _refuse(path, f"array {name!r} is not a numeric array.")
    if arr.dtype.str != spec["dtype"] or list(arr.shape) != list(spec["shape"]):
        raise _refuse(
            path,
            f"array {name!r} has dtype {arr.dtype.str} and shape {arr.shape}, but config.json "
            f"records {spec['dtype']} and {tuple(spec['shape'])} (arrays were swapped or edited).",
        )
    if _sha256(arr) != spec["sha256"]:
        raise _refuse(path, f"array {name!r} does not match its SHA-256 (the file was modified or corrupted).")
    return np.array(arr, dtype=arr.dtype.newbyteorder("="))  # writable, native byte order


def _marked_backbone(config):
    """The architecture of a file that ``skpadim fit`` wrote before :mod:`.named` backbones were
    parameters: a custom module, named in the metadata key ``cli_backbone_``; else None."""
    metadata = config.get("metadata")
    name = metadata.get(_CLI_MARKER) if isinstance(metadata, dict) else None
    return named.architecture(name) if isinstance(name, str) and name in named.NAMED else None


def load(cls, path, backbone=None):
    """Read a detector written by :func:`save`: ``(estimator, state)``."""
    path = os.fspath(path)
    config, arrays = _read_verified(path)
    source = f"'{path}'"
    try:
        if set(config) != _CONFIG_KEYS:
            odd = sorted(set(config) ^ _CONFIG_KEYS)
            raise _refuse(path, f"config.json has unexpected or missing keys {odd}.")
        defaults = cls().get_params(deep=False)
        params = {k: _from_json(v) for k, v in config["params"].items()}
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise _refuse(path, f"unknown parameters {unknown} (written by a newer skpadim?).")
        if "backbone" in params and backbone is not None:
            raise ValueError(
                f"{source} holds the backbone {params['backbone']!r}, which is rebuilt from the "
                "file by its name, so do not pass backbone= to load."
            )
        if backbone is None and "backbone" not in params:
            backbone = _marked_backbone(config)
        est = cls(**{**params, **({} if backbone is None else {"backbone": backbone})})
        device = load_device(config["state"]["spec"]["device"], est.device)
        state = FittedState.from_arrays(arrays, config["state"], device=device, module=backbone, source=source)
        if state.precision is None:
            raise _refuse(path, "it holds no fitted statistics.")
    except InconsistentState as exc:
        raise _refuse(path, f"inconsistent contents: {exc.detail}.") from None
    except ValueError as exc:
        if source in str(exc):
            raise
        raise _refuse(path, str(exc)) from None
    except (KeyError, TypeError, IndexError, RuntimeError, AttributeError) as exc:
        raise _refuse(path, f"inconsistent contents ({type(exc).__name__}: {exc}).") from None
    return est, state
