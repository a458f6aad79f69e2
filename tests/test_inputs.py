"""Bad inputs: every mistake gives a ValueError that names the culprit and the fix."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from torch import nn

from skpadim import PadimDetector
from skpadim._images import ImageSet, check_images

from conftest import SMALL, textured
from reference import input_batches

X = textured(6)
F = X / 255.0


def _fit(X, y=None, **params):
    return PadimDetector(**{**SMALL, **params}).fit(X, y)


def _with(a, index, value):
    a = a.copy()
    a[index] = value
    return a


# ----------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.empty((0, 32, 32, 3), np.uint8), r"X is empty: expected at least one image, got shape \(0, 32, 32, 3\)"),
        ([], r"X is empty: expected at least one image, got an empty list"),
        (X[0], r"X has shape \(32, 32, 3\), which looks like a single \(H, W, C\) image.*X\[None\]"),
        (X[0, ..., :1], r"X has shape \(32, 32, 1\), which looks like a single .*X\[None\]"),
        (X[0, ..., 0], r"X must have shape \(N, H, W\) or \(N, H, W, C\), got .*\(32, 32\).*X\[None\]"),
        (X[None], r"X must have shape \(N, H, W\) or \(N, H, W, C\), got .*\(1, 6, 32, 32, 3\)"),
        (np.zeros(5, np.uint8), r"X must have shape .*got an array of shape \(5,\)"),
        (np.array(3), r"X must be an array of images .*got a 0-d array"),
        (X[..., :2], r"X has 2 channels \(shape \(6, 32, 32, 2\)\); expected 1 \(grayscale\), 3 \(RGB\) or 4"),
        (X.transpose(0, 3, 1, 2), r"X has 32 channels .*X.transpose\(0, 2, 3, 1\)"),
        (np.zeros((2, 0, 8, 3), np.uint8), r"X has an empty image: shape \(2, 0, 8, 3\)"),
        (_with(F, (2, 3, 4, 0), np.nan), r"X contains 1 NaN and 0 infinite .*first is image 2\); expected finite floats in \[0, 1\]"),
        (_with(F, (4, 0, 0, 1), np.inf), r"X contains 0 NaN and 1 infinite .*first is image 4"),
        (F - 0.5, r"X has float pixel values in \[-0.\d+, 0.\d+\]; expected floats in \[0, 1\].*'normalize'"),
        (F * 1.5, r"X has float pixel values in \[0.\d+, 1.\d+\]; expected floats in \[0, 1\].*Rescale"),
        (X.astype(np.float32), r"X has float pixel values in \[\d+, \d+\].*8-bit values stored as floats.*X.astype\(np.uint8\)"),
        (X.astype(np.uint16) * 257, r"X has dtype uint16; expected uint8 .*65535"),
        (X > 128, r"X has dtype bool; expected uint8 .*X.astype\(np.uint8\) \* 255"),
        (X.astype(np.int64), r"X has dtype int64; expected uint8 .*X.astype\(np.uint8\)"),
        (F.astype(np.complex64), r"X has dtype complex64; expected uint8"),
        ([X[0], X[1, ..., 0]], r"X mixes grayscale and color images"),
        ([X[0], np.full((8, 8, 3), 2.0)], r"X\[1\] has float pixel values in \[2, 2\]"),
        ([X[0], "not an image"], r"X\[1\]: image file 'not an image' does not exist"),
        ([X[0], 3], r"X\[1\] must be an image array or a file path, got int"),
        ("images/*.png", r"got the single path 'images/\*.png'; wrap it in a list"),
        (42, r"X must be an array of images, a list of images or a list of image paths, got int"),
    ],
)
def test_bad_arrays_are_refused_by_fit(bad, match):
    with pytest.raises(ValueError, match=match):
        PadimDetector(**SMALL).fit(bad)


def test_rgba_drops_alpha(fitted):
    rgb = textured(3, seed=5)
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:3] + (1,), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=-1)
    np.testing.assert_array_equal(fitted.score_samples(rgba), fitted.score_samples(rgb))
    np.testing.assert_array_equal(fitted.anomaly_map(list(rgba)), fitted.anomaly_map(list(rgb)))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble, ">f4", ">f8"])
def test_every_float_dtype_gives_the_same_scores(fitted, dtype):
    test = textured(2, seed=7)
    expected = fitted.score_samples(test.astype(np.float32) / np.float32(255))
    got = fitted.score_samples((test.astype(np.float32) / np.float32(255)).astype(dtype))
    np.testing.assert_allclose(got, expected, rtol=2e-3 if dtype == np.float16 else 1e-6)


def test_predict_refuses_other_channel_count(fitted):
    with pytest.raises(ValueError, match=r"X holds grayscale \(1 channel\) images, but the detector was fitted on color"):
        fitted.predict(X[..., 0])


def test_tiny_images_are_resized(fitted):
    tiny = textured(3, size=4)
    assert fitted.score_samples(tiny).shape == (3,)
    assert fitted.anomaly_map(tiny).shape == (3, 4, 4)


def test_image_size_smaller_than_the_receptive_field():
    with pytest.raises(ValueError, match=r"image_size=\(8, 8\) is too small for layer 'layer3'.*at least \(16, 16\)"):
        _fit(X, image_size=(8, 8))


def test_mixed_sizes_in_a_list(fitted):
    imgs = [textured(1, size=32)[0], textured(1, size=48, seed=1)[0], textured(1, size=40, seed=2)[0][:, :24]]
    maps = fitted.anomaly_map(imgs)
    assert isinstance(maps, list) and [m.shape for m in maps] == [(32, 32), (48, 48), (40, 24)]
    scores = fitted.score_samples(imgs)
    np.testing.assert_allclose(scores, [fitted.score_samples([img])[0] for img in imgs], rtol=1e-6)
    for img, m in zip(imgs, maps):  # batch composition does not change an image's map
        np.testing.assert_allclose(m, fitted.anomaly_map([img])[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ files


def _png(path, arr, mode=None):
    Image.fromarray(arr, mode=mode).save(path)
    return str(path)


def test_corrupted_file(tmp_path, fitted):
    good = _png(tmp_path / "good.png", X[0])
    data = open(good, "rb").read()
    bad = tmp_path / "truncated.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"X\[1\]: could not read image file '.*truncated.png'.*Expected a readable image"):
        fitted.score_samples([good, str(bad)])


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "dangling", "missing"])
def test_unreadable_files_raise_a_typed_error_with_path_and_reason(tmp_path, fitted, kind):
    from skpadim.exceptions import UnreadableImageError

    good = _png(tmp_path / "good.png", X[0])
    bad = tmp_path / f"{kind}.png"
    if kind == "truncated":
        bad.write_bytes(open(good, "rb").read()[:200])
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("not an image\n")
    elif kind == "dangling":
        bad.symlink_to(tmp_path / "nowhere.png")
    reason = {"truncated": "truncated", "empty": "empty file (0 bytes)", "text": "not an image file",
              "dangling": "broken symbolic link", "missing": "does not exist"}[kind]
    for call in (fitted.score_samples, fitted.anomaly_map, PadimDetector(**SMALL).fit):
        with pytest.raises(UnreadableImageError) as info:  # a ValueError, as before
            call([good, str(bad), good])
        assert info.value.path == str(bad) and reason in info.value.reason
        assert str(info.value).startswith(f"X[1]: ") and reason in str(info.value)


def test_missing_file(tmp_path, fitted):
    with pytest.raises(ValueError, match=r"X\[0\]: image file '.*missing.png' does not exist"):
        fitted.score_samples([tmp_path / "missing.png"])


def test_text_file_named_png(tmp_path, fitted):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image\n")
    with pytest.raises(ValueError, match=r"X\[0\]: could not read image file '.*notes.png'"):
        fitted.score_samples([str(fake)])


def test_16_bit_png_is_refused_with_a_hint(tmp_path, fitted):
    path = _png(tmp_path / "deep.png", X[0, ..., 0].astype(np.uint16) * 257)
    with pytest.raises(ValueError, match=r"X\[0\]: image file '.*deep.png' has mode 'I.*16-bit.*float array in \[0, 1\]"):
        fitted.score_samples([path])


def test_files_give_the_scores_of_arrays(tmp_path, fitted):
    paths = [_png(tmp_path / f"{i}.png", img) for i, img in enumerate(X[:3])]
    np.testing.assert_array_equal(fitted.score_samples(paths), fitted.score_samples(X[:3]))
    np.testing.assert_array_equal(fitted.score_samples(np.array(paths)), fitted.score_samples(X[:3]))


# ----------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "y, match",
    [
        ([0, 1, 2, 0, 0, 0], r"y has unknown labels \[2\]; expected \{0, 1\}"),
        ([0, 1], r"y has 2 labels but X has 6 images"),
        ([1] * 6, r"y marks every image as anomalous"),
        ([-1] * 6, r"y marks every image as anomalous"),
        ([[0, 1, 0, 0, 0, 0]], r"y must be a 1-D array of labels, got an array of shape \(1, 6\)"),
        (["a"] * 6, r"y must hold numeric labels"),
    ],
)
def test_bad_labels(y, match):
    with pytest.raises(ValueError, match=match):
        _fit(X, y)


# ------------------------------------------------------------- parameters


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return self.a(x)


_NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"backbone": "resnet19"}, r"Unknown backbone 'resnet19'. Did you mean 'resnet18'"),
        ({"backbone": 3}, r"The 'backbone' parameter of PadimDetector must be a torchvision model name or a torch.nn.Module. Got 3 instead"),
        ({"layers": ["layer1", "layr2"]}, r"'layers' parameter names 'layr2'.*Did you mean 'layer2'"),
        ({"layers": "layer1"}, r"'layers' parameter .* non-empty list of module names. Got 'layer1'"),
        ({"backbone": _Net()}, r"'layers' parameter of PadimDetector is required for a custom module"),
        ({"n_features": 0}, r"The 'n_features' parameter of PadimDetector must be None or an int in the range \[1, inf\). Got 0 instead"),
        ({"n_features": 100_000}, r"'n_features' parameter of PadimDetector is 100000, but layers .* have only 448 channels"),
        ({"epsilon": 0}, r"The 'epsilon' parameter of PadimDetector must be a float in the range \(0.0, inf\). Got 0 instead"),
        ({"epsilon": -1.0}, r"'epsilon' .*Got -1.0"),
        ({"epsilon": float("nan")}, r"'epsilon' .*Got nan"),
        ({"sigma": -1.0}, r"The 'sigma' parameter of PadimDetector must be a float in the range \[0.0, inf\). Got -1.0 instead"),
        ({"contamination": 0.0}, r"The 'contamination' parameter of PadimDetector must be a str among \{'auto'\} or a float in the range \(0.0, 0.5\]. Got 0.0 instead"),
        ({"contamination": 0.7}, r"'contamination' .*Got 0.7"),
        ({"contamination": "high"}, r"'contamination' .*Got 'high'"),
        ({"image_size": 0}, r"The 'image_size' parameter of PadimDetector must be None, an int in the range \[1, inf\) or a \(height, width\) pair of positive ints. Got 0 instead"),
        ({"image_size": (32,)}, r"'image_size' .*\(height, width\) pair.*Got \(32,\)"),
        ({"image_size": "big"}, r"'image_size' .*Got 'big'"),
        ({"image_size": 32.0}, r"'image_size' .*Got 32.0"),
        ({"batch_size": 0}, r"The 'batch_size' parameter of PadimDetector must be a str among \{'auto'\} or an int in the range \[1, inf\). Got 0 instead"),
        ({"batch_size": 2.5}, r"'batch_size' .*Got 2.5"),
        ({"device": "tpu"}, r"'device' parameter of PadimDetector must be 'auto', 'cpu', 'cuda'.*Got 'tpu'"),
        ({"device": "cuda:7"}, r"'device' parameter of PadimDetector is 'cuda:7', but"),
        pytest.param({"device": "cuda"}, r"'device' parameter of PadimDetector is 'cuda', but CUDA is not available",
                     marks=pytest.mark.skipif(not _NO_CUDA, reason="CUDA is available")),
        ({"normalize": "imagenet2"}, r"The 'normalize' parameter of PadimDetector must be a str among \{'imagenet'\}, None or a \(mean, std\) pair of 3 finite floats each, std > 0. Got 'imagenet2' instead"),
        ({"normalize": ((0.5,) * 3,)}, r"'normalize' parameter"),
        ({"normalize": ((0.5,) * 2, (0.5,) * 3)}, r"'normalize' parameter .*pair of 3 finite floats"),
        ({"normalize": ((0.5,) * 3, (0.0,) * 3)}, r"'normalize' parameter .*std > 0"),
        ({"weights": "IMAGENET_V9"}, r"'weights' parameter must be 'DEFAULT', a member of ResNet18_Weights .*got 'IMAGENET_V9'"),
        ({"weights": "/nonexistent/weights.pth"}, r"'weights' parameter .*got '/nonexistent/weights.pth' \(no such file either\)"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        _fit(X, **params)


def _calls(det):
    return {
        "fit": lambda: det.fit(X),
        "partial_fit": lambda: det.partial_fit(X),
        "fit_predict": lambda: det.fit_predict(X),
        "score_samples": lambda: det.score_samples(X),
        "decision_function": lambda: det.decision_function(X),
        "predict": lambda: det.predict(X),
        "anomaly_map": lambda: det.anomaly_map(X),
    }


@pytest.mark.parametrize(
    "params, match",
    [
        ({"batch_size": 0}, r"The 'batch_size' parameter of PadimDetector must be a str among \{'auto'\} or an int in the range \[1, inf\). Got 0 instead"),
        ({"batch_size": True}, r"'batch_size' .*Got True instead"),
        ({"contamination": 5.0}, r"The 'contamination' parameter of PadimDetector must be .* \(0.0, 0.5\]. Got 5.0 instead"),
        ({"epsilon": float("inf")}, r"'epsilon' .*Got inf instead"),
        ({"verbose": -1}, r"'verbose' .*Got -1 instead"),
        ({"device": "tpu"}, r"'device' parameter .*'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device. Got 'tpu'"),
    ],
)
@pytest.mark.parametrize("method", list(_calls(None)))
def test_parameters_are_validated_at_every_call(fitted, params, match, method):
    """set_params does not validate; every public method does, before any work."""
    det = pickle.loads(pickle.dumps(fitted))
    det.set_params(**params)
    with pytest.raises(ValueError, match=match):
        _calls(det)[method]()
    assert det.get_params()[next(iter(params))] == params[next(iter(params))]
    assert det.n_samples_seen_ == fitted.n_samples_seen_  # nothing was done, nothing reset


def test_state_dict_that_does_not_match(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ValueError, match=r"state_dict in '.*other.pth' does not match the backbone"):
        _fit(X, weights=str(path))


# ------------------------------------------------------------------- fuzz

_DTYPES = [
    np.uint8, np.int8, np.uint16, np.int32, np.int64, np.bool_, np.float16, np.float32,
    np.float64, ">f4", ">f8", np.complex64, "<M8[s]",
]
_VALID_FLOATS = st.floats(0.0, 1.0, width=16)
_ANY_FLOATS = st.one_of(
    st.floats(0.0, 1.0, width=16),
    st.floats(-2.0, 300.0, width=16),
    st.sampled_from([np.nan, np.inf, -np.inf]),
)


def _shapes():
    side = st.integers(0, 6)
    near_valid = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.sampled_from([1, 2, 3, 4, 5]))
    return st.one_of(near_valid, st.integers(0, 5).flatmap(lambda r: st.tuples(*[side] * r)))


@st.composite
def _arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = draw(_shapes())
    if dtype.kind == "f":
        elements = draw(st.sampled_from([_VALID_FLOATS, _ANY_FLOATS]))
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


def _documented_valid(a):
    if a.dtype != np.uint8 and a.dtype.kind != "f":
        return False
    if a.ndim not in (3, 4) or a.size == 0:
        return False
    if a.ndim == 3 and a.shape[-1] <= 4:  # reads as one (H, W, C) image
        return False
    if a.ndim == 4 and a.shape[-1] not in (1, 3, 4):
        return False
    if a.dtype.kind == "f":
        return bool(np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= 1)
    return True


@settings(max_examples=100, deadline=None)
@given(_arrays())
def test_check_images_accepts_exactly_the_documented_arrays(a):
    try:
        images = check_images(a)
    except ValueError:
        assert not _documented_valid(a), f"refused a valid array {a.dtype} {a.shape}"
        return
    assert _documented_valid(a), f"accepted an invalid array {a.dtype} {a.shape}"
    assert isinstance(images, ImageSet) and len(images) == a.shape[0]
    x, sizes = next(input_batches(images, 2, (4, 4)))
    assert x.dtype == torch.float32 and x.shape == (min(2, len(a)), 3, 4, 4)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert sizes[0] == a.shape[1:3]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(_arrays(), st.integers(), st.text(max_size=3)), max_size=3))
def test_check_images_on_lists_raises_only_value_errors(items):
    try:
        images = check_images(items)
    except ValueError:
        return
    assert len(images) == len(items)
