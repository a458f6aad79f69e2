"""The pickle-free format: round trips, integrity checks, atomic writes."""

import builtins
import hashlib
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from torch import nn

from skpadim import PadimDetector
from skpadim._engine import model_file as _safe_io

from conftest import SMALL, textured

X = textured(10, seed=40)
TEST = textured(4, seed=41)


class TinyNet(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(width, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))).mean((2, 3)))


def _tiny(seed, width=8):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyNet(width)


@pytest.fixture(scope="module")
def resnet():
    return PadimDetector(**SMALL).fit(X)


@pytest.fixture(scope="module")
def saved(resnet, tmp_path_factory):
    path = tmp_path_factory.mktemp("safe") / "detector.skpadim"
    resnet.save(path)
    return path


@pytest.fixture(scope="module")
def custom():
    params = {**SMALL, "weights": "DEFAULT", "n_features": 24}
    return PadimDetector(backbone=_tiny(0), layers=["stem", "block1", "block2"], **params).fit(X)


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _rewrite(src, dst, members):
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _npy(arr):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _with_config(members, edit, rehash=True):
    config = json.loads(members["config.json"])
    edit(config)
    blob = json.dumps(config).encode()
    out = dict(members, **{"config.json": blob})
    if rehash:
        out["config.sha256"] = hashlib.sha256(blob).hexdigest().encode()
    return out


# -------------------------------------------------------------- round trip


def test_round_trip_resnet18(resnet, saved):
    loaded = PadimDetector.load(saved)
    np.testing.assert_array_equal(loaded.score_samples(TEST), resnet.score_samples(TEST))
    np.testing.assert_array_equal(loaded.anomaly_map(TEST), resnet.anomaly_map(TEST))
    np.testing.assert_array_equal(loaded.predict(TEST), resnet.predict(TEST))
    np.testing.assert_array_equal(loaded.precision_, resnet.precision_)
    np.testing.assert_array_equal(loaded.feature_index_, resnet.feature_index_)
    assert loaded.get_params() == resnet.get_params()
    for name in ("offset_", "n_samples_seen_", "layers_", "layer_shapes_", "feature_map_shape_",
                 "n_channels_in_", "device_"):
        assert getattr(loaded, name) == getattr(resnet, name), name
    np.testing.assert_array_equal(loaded.calibration_scores_, resnet.calibration_scores_)
    # The backbone is the fitted one, weight for weight, and nothing after layer3.
    a, b = loaded.backbone_.state_dict(), resnet.backbone_.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [k for k in a if k.startswith(("layer4", "fc"))]


def test_loading_does_not_factorize(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a Cholesky factorization ran at load")

    monkeypatch.setattr(torch.linalg, "cholesky_ex", refuse)
    monkeypatch.setattr(torch.linalg, "cholesky", refuse)
    PadimDetector.load(saved)


def test_metadata_is_kept_in_the_file_and_never_applied(resnet, tmp_path):
    path = tmp_path / "meta.skpadim"
    resnet.save(path, metadata={"line": 3, "offset_": -1.0, "note": "weekly refit"})
    with zipfile.ZipFile(path) as zf:
        config = json.loads(zf.read("config.json"))
    assert config["metadata"] == {"line": 3, "offset_": -1.0, "note": "weekly refit"}
    loaded = PadimDetector.load(path)
    assert loaded.offset_ == resnet.offset_ and not hasattr(loaded, "line")
    with pytest.raises(ValueError, match="metadata must be JSON-representable"):
        resnet.save(tmp_path / "bad.skpadim", metadata={"a": object()})
    assert sorted(os.listdir(tmp_path)) == ["meta.skpadim"]


def test_loaded_detector_continues_like_a_pickled_one(resnet, saved):
    more = textured(4, seed=42)
    a = PadimDetector.load(saved).partial_fit(more)
    b = pickle.loads(pickle.dumps(resnet)).partial_fit(more)
    np.testing.assert_array_equal(a.precision_, b.precision_)
    assert a.offset_ == b.offset_


def test_the_file_holds_no_pickle(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    with np.load(saved, allow_pickle=False) as npz:
        for name in npz.files:
            assert isinstance(npz[name], (np.ndarray, bytes))
    PadimDetector.load(saved)


def test_round_trip_custom_module(custom, tmp_path):
    path = tmp_path / "custom.skpadim"
    custom.save(path)
    module = _tiny(seed=123)  # same architecture, other weights: the saved ones are loaded into a copy
    before = {k: v.clone() for k, v in module.state_dict().items()}
    loaded = PadimDetector.load(path, backbone=module)
    np.testing.assert_array_equal(loaded.score_samples(TEST), custom.score_samples(TEST))
    np.testing.assert_array_equal(loaded.anomaly_map(TEST), custom.anomaly_map(TEST))
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())  # not modified
    assert loaded.backbone is module and loaded.backbone_ is not module
    loaded.partial_fit(TEST)  # the embedding parameters are consistent
    assert loaded.n_samples_seen_ == len(X) + len(TEST)


def test_custom_module_must_be_passed(custom, tmp_path):
    path = tmp_path / "custom.skpadim"
    custom.save(path)
    with pytest.raises(ValueError, match=r"'.*custom.skpadim' was fitted with a custom backbone module \(.*TinyNet\).*backbone=module"):
        PadimDetector.load(path)
    with pytest.raises(ValueError, match=r"'.*custom.skpadim' do not match the backbone.*not the architecture"):
        PadimDetector.load(path, backbone=_tiny(0, width=4))
    with pytest.raises(ValueError, match=r"do not match the backbone: unexpected key .*\(Sequential\) is not the architecture"):
        PadimDetector.load(path, backbone=nn.Sequential(nn.Conv2d(3, 8, 3)))


def test_torchvision_backbone_is_not_passed(saved):
    with pytest.raises(ValueError, match=r"holds the backbone 'resnet18', which is rebuilt from the file by its name.*do not pass backbone="):
        PadimDetector.load(saved, backbone=_tiny(0))


def test_unfitted_detector_cannot_be_saved(tmp_path):
    with pytest.raises(NotFittedError):
        PadimDetector(**SMALL).save(tmp_path / "x.skpadim")
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------- integrity


def _flip(path, offset, dst):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def _offset_of(path, member, into=200):
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    return info.header_offset + 30 + len(info.filename) + len(info.extra) + into


@pytest.mark.parametrize("where", ["config", "array", "end", "start"])
def test_flipped_bytes_are_refused(saved, tmp_path, where):
    size = saved.stat().st_size
    offset = {
        "config": _offset_of(saved, "config.json", into=40),
        "array": _offset_of(saved, "stats.outer_upper.npy", into=500),
        "end": size - 10,
        "start": 0,
    }[where]
    bad = _flip(saved, offset, tmp_path / "flipped.skpadim")
    with pytest.raises(ValueError, match=r"Cannot load '.*flipped.skpadim' as a skpadim detector"):
        PadimDetector.load(bad)


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.5, 0.999])
def test_truncated_file_is_refused(saved, tmp_path, keep):
    data = saved.read_bytes()
    bad = tmp_path / "truncated.skpadim"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"Cannot load '.*truncated.skpadim'"):
        PadimDetector.load(bad)


def test_swapped_arrays_are_refused(saved, tmp_path):
    m = _members(saved)
    swapped = dict(m, **{"stats.shift.npy": m["stats.total.npy"], "stats.total.npy": m["stats.shift.npy"]})
    bad = _rewrite(saved, tmp_path / "swapped.skpadim", swapped)
    with pytest.raises(ValueError, match=r"'.*swapped.skpadim'.*array 'stats.\w+' has dtype .* but config.json records"):
        PadimDetector.load(bad)


def test_edited_array_values_are_refused(saved, tmp_path):
    m = _members(saved)
    with np.load(saved, allow_pickle=False) as npz:
        shift = npz["stats.shift"] + 1
    bad = _rewrite(saved, tmp_path / "edited.skpadim", dict(m, **{"stats.shift.npy": _npy(shift)}))
    with pytest.raises(ValueError, match=r"'.*edited.skpadim'.*array 'stats.shift' does not match its SHA-256"):
        PadimDetector.load(bad)


def test_edited_config_is_refused(saved, tmp_path):
    m = _with_config(_members(saved), lambda c: c["state"]["fitted"].update(offset=-1e9), rehash=False)
    bad = _rewrite(saved, tmp_path / "config.skpadim", m)
    with pytest.raises(ValueError, match=r"'.*config.skpadim'.*config.json does not match its SHA-256"):
        PadimDetector.load(bad)


@pytest.mark.parametrize("edit", [
    lambda c: c["state"]["spec"]["shapes"].__setitem__(0, [64, 4, 4]),
    lambda c: c["state"].update(n=3),
    lambda c: c["state"]["fitted"].update(contamination=0.9),
    lambda c: c["state"]["spec"].update(image_size=[32]),
])
def test_inconsistent_contents_are_refused_even_with_valid_hashes(saved, tmp_path, edit):
    m = _with_config(_members(saved), edit)
    bad = _rewrite(saved, tmp_path / "shapes.skpadim", m)
    with pytest.raises(ValueError, match=r"'.*shapes.skpadim'.*inconsistent contents"):
        PadimDetector.load(bad)


def _add_array(members, name, arr):
    def edit(c):
        c["arrays"][name] = {"dtype": arr.dtype.str, "shape": list(arr.shape),
                             "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}

    out = _with_config(members, edit)
    out[name + ".npy"] = _npy(arr)
    return out


@pytest.mark.parametrize("what", ["config key", "state key", "array", "attribute array"])
def test_only_the_known_contents_are_accepted(saved, tmp_path, what):
    """Nothing in a file reaches the detector but its parameters and its fitted state."""
    m = _members(saved)
    if what == "config key":
        m = _with_config(m, lambda c: c.update(extra={"offset_": -1e9}))
    elif what == "state key":
        m = _with_config(m, lambda c: c["state"].update(offset_=-1e9))
    elif what == "array":
        m = _add_array(m, "calibration_extra", np.zeros(3))
    else:
        m = _add_array(m, "extra.precision_", np.zeros(3))
    bad = _rewrite(saved, tmp_path / "extra.skpadim", m)
    with pytest.raises(ValueError, match=r"Cannot load '.*extra.skpadim'.*(unexpected|inconsistent)"):
        PadimDetector.load(bad)


def test_files_of_the_first_format_ask_for_a_refit(saved, tmp_path):
    m = _with_config(_members(saved), lambda c: c.update(format_version=1, skpadim_version="0.0.1"))
    bad = _rewrite(saved, tmp_path / "old.skpadim", m)
    with pytest.raises(ValueError, match=r"'.*old.skpadim'.*format version 1, which this skpadim no longer reads"):
        PadimDetector.load(bad)


def test_newer_format_asks_for_an_upgrade(saved, tmp_path):
    m = _with_config(_members(saved), lambda c: c.update(format_version=99, skpadim_version="9.0"))
    bad = _rewrite(saved, tmp_path / "future.skpadim", m)
    with pytest.raises(ValueError, match=r"'.*future.skpadim'.*skpadim '9.0' in format version 99.*Upgrade skpadim"):
        PadimDetector.load(bad)


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_backbone_name_is_never_imported(saved, tmp_path):
    m = _with_config(_members(saved), lambda c: c["state"]["spec"].update(backbone="os.system"))
    bad = _rewrite(saved, tmp_path / "name.skpadim", m)
    with pytest.raises(ValueError, match=r"'.*name.skpadim' names the backbone 'os.system', which is not a torchvision"):
        PadimDetector.load(bad)


def test_pickled_object_array_is_not_executed(saved, tmp_path):
    marker = tmp_path / "pwned"
    evil = np.array([_Payload(marker)], dtype=object)
    m = _with_config(_members(saved), lambda c: c["arrays"]["calibration"].update(dtype="|O", shape=[1]))
    m["calibration.npy"] = _npy(evil)
    bad = _rewrite(saved, tmp_path / "evil.skpadim", m)
    with pytest.raises(ValueError, match=r"'.*evil.skpadim'.*cannot be read without pickle"):
        PadimDetector.load(bad)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "text", "npy"])
def test_other_files_are_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / f"other.{kind}"
    if kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    elif kind == "text":
        path.write_text("hello")
    else:
        np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match=r"Cannot load '.*other.*' as a skpadim detector: it is not a zip archive"):
        PadimDetector.load(path)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.skpadim"):
        PadimDetector.load(tmp_path / "nope.skpadim")


def test_state_dict_with_a_pickle_payload_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"Could not read the state_dict file '.*evil.pth'"):
        PadimDetector(**{**SMALL, "weights": str(path)}).fit(X[:2])
    assert not marker.exists()


# ---------------------------------------------------------- atomic writes


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_leaves_no_file(resnet, tmp_path, monkeypatch, exc):
    calls = []

    def failing(zf, name, arr):
        calls.append(name)
        if len(calls) == 3:
            raise exc

    monkeypatch.setattr(_safe_io, "_write_array", failing)
    with pytest.raises(type(exc)):
        resnet.save(tmp_path / "det.skpadim")
    assert len(calls) == 3
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_old_file(resnet, saved, tmp_path, monkeypatch):
    path = tmp_path / "det.skpadim"
    path.write_bytes(saved.read_bytes())

    def failing(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(_safe_io.os, "replace", failing)
    with pytest.raises(OSError, match="rename failed"):
        resnet.save(path)
    assert os.listdir(tmp_path) == ["det.skpadim"]
    assert path.read_bytes() == saved.read_bytes()


def test_save_overwrites_atomically(resnet, custom, tmp_path):
    path = tmp_path / "det.skpadim"
    custom.save(path)
    resnet.save(str(path))
    assert os.listdir(tmp_path) == ["det.skpadim"]
    np.testing.assert_array_equal(PadimDetector.load(path).score_samples(TEST), resnet.score_samples(TEST))


def test_parameters_json_cannot_hold_are_reset_with_a_warning(tmp_path):
    det = PadimDetector(**{**SMALL, "random_state": np.random.RandomState(0),
                           "normalize": (np.array([0.5] * 3), np.array([0.25] * 3))}).fit(X[:4])
    path = tmp_path / "det.skpadim"
    with pytest.warns(UserWarning, match=r"parameters \['random_state'\] .*cannot be stored without pickle"):
        det.save(path)
    loaded = PadimDetector.load(path)
    assert loaded.random_state is None and loaded.normalize == ([0.5] * 3, [0.25] * 3)
    np.testing.assert_array_equal(loaded.score_samples(TEST), det.score_samples(TEST))
