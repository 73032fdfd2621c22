"""ResNet backbone: torchvision's state-dict layout, loading ImageNet weights, frozen stages."""

from __future__ import annotations

import pytest
import torch

from p2m_core.errors import P2MInputError
from p2m_core.model.backbone import FrozenBatchNorm2d, ResNet, load_pretrained



def torchvision_layout(depth: int, width: int = 64) -> list[tuple[str, tuple[int, ...]]]:
    """torchvision's ResNet state dict as published (names, shapes, order), without ``fc``.

    Written from the architecture, not from our model: the stem is a 7x7 conv to 64 channels;
    stage i has ``64 * 2**i`` planes and ``blocks[i]`` blocks; a Bottleneck is 1x1 (planes),
    3x3 (planes), 1x1 (4 * planes), a BasicBlock 3x3, 3x3; the first block of a stage has a
    ``downsample`` (1x1 conv + BN) when its input channels differ from its output or it strides.
    Each BN holds weight, bias, running_mean, running_var ([C]; ``num_batches_tracked`` omitted).
    """
    bottleneck = depth >= 50
    blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    layout: list[tuple[str, tuple[int, ...]]] = []

    def conv_bn(conv: str, bn: str, c_in: int, c_out: int, k: int) -> None:
        layout.append((f"{conv}.weight", (c_out, c_in, k, k)))
        layout.extend((f"{bn}.{t}", (c_out,)) for t in ("weight", "bias", "running_mean", "running_var"))

    conv_bn("conv1", "bn1", 3, width, 7)
    c_in = width
    for i, n in enumerate(blocks):
        planes = width * 2**i
        c_out = planes * (4 if bottleneck else 1)
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            if bottleneck:
                conv_bn(f"{p}.conv1", f"{p}.bn1", c_in, planes, 1)
                conv_bn(f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
                conv_bn(f"{p}.conv3", f"{p}.bn3", planes, c_out, 1)
            else:
                conv_bn(f"{p}.conv1", f"{p}.bn1", c_in, planes, 3)
                conv_bn(f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
            if j == 0 and (i > 0 or c_in != c_out):
                conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", c_in, c_out, 1)
            c_in = c_out
    return layout


def imagenet_file(tmp_path, depth: int = 18, width: int = 8, wrap: bool = False, edit=None):
    """A random checkpoint in torchvision's format (+ fc and num_batches_tracked) saved to tmp_path."""
    g = torch.Generator().manual_seed(depth)
    state = {name: torch.randn(shape, generator=g) for name, shape in torchvision_layout(depth, width)}
    for name in [n for n in state if n.endswith("running_var")]:
        state[name] = state[name].abs() + 0.1
        state[name.replace("running_var", "num_batches_tracked")] = torch.tensor(1000)
    state["fc.weight"], state["fc.bias"] = torch.randn(10, 8 * width), torch.randn(10)
    if edit is not None:
        edit(state)
    path = tmp_path / "resnet_imagenet.pth"
    torch.save({"state_dict": state} if wrap else state, path)
    return path, state


@pytest.mark.parametrize("depth", [18, 50, 101])
def test_state_dict_layout_is_torchvisions(depth):
    ours = [(k, tuple(v.shape)) for k, v in ResNet(depth, width=64 if depth == 50 else 8).state_dict().items()]
    assert ours == torchvision_layout(depth, 64 if depth == 50 else 8)


@pytest.mark.parametrize("wrap", [False, True])
def test_load_pretrained_copies_every_tensor(tmp_path, wrap):
    path, state = imagenet_file(tmp_path, wrap=wrap)
    model = ResNet(18, width=8)
    load_pretrained(model, path)
    loaded = model.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name]), name


def test_load_pretrained_rejects_wrong_shape(tmp_path):
    def edit(state):
        state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)

    path, _ = imagenet_file(tmp_path, edit=edit)
    model = ResNet(18, width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(P2MInputError) as err:
        load_pretrained(model, path)
    message = str(err.value)
    assert str(path) in message and "layer2.0.conv1.weight" in message
    assert "(3, 3, 3, 3)" in message and "(16, 8, 3, 3)" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_load_pretrained_rejects_missing_and_unexpected_keys(tmp_path):
    def edit(state):
        del state["layer3.1.bn2.running_mean"]
        state["layer5.0.conv1.weight"] = torch.zeros(1)

    path, _ = imagenet_file(tmp_path, edit=edit)
    with pytest.raises(P2MInputError) as err:
        load_pretrained(ResNet(18, width=8), path)
    message = str(err.value)
    assert str(path) in message and "missing: layer3.1.bn2.running_mean" in message
    assert "unexpected: layer5.0.conv1.weight" in message


def test_load_pretrained_missing_or_unreadable_file(tmp_path):
    with pytest.raises(P2MInputError, match="no such file.*nowhere.pth"):
        load_pretrained(ResNet(18, width=8), tmp_path / "nowhere.pth")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(P2MInputError, match="bad.pth"):
        load_pretrained(ResNet(18, width=8), bad)


def test_frozen_stages_and_frozen_batch_norm():
    torch.manual_seed(0)
    model = ResNet(50, width=8, frozen_stages=1)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("conv1.", "layer1.")) for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("layer2", "layer3", "layer4")))
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(("conv1.", "layer1.")))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(n.endswith("num_batches_tracked") for n in model.state_dict())

    with torch.no_grad():  # non-trivial statistics, so a train-mode batch norm would differ
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    expected = model(x)
    model.train()
    outputs = model(x)
    sum(o.sum() for o in outputs).backward()
    for a, b in zip(outputs, expected):
        torch.testing.assert_close(a, b)
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(("conv1.", "layer1.")))
    assert model.layer2[0].conv1.weight.grad is not None

    assert all(p.requires_grad for p in ResNet(18, width=8, frozen_stages=0).parameters())
    stage3 = ResNet(18, width=8, frozen_stages=3)
    assert [n for n, p in stage3.named_parameters() if p.requires_grad][0].startswith("layer4.")


@pytest.mark.parametrize("depth, channels", [(18, (16, 32, 64)), (50, (64, 128, 256)), (101, (64, 128, 256))])
def test_output_channels_and_strides(depth, channels):
    model = ResNet(depth, width=8).eval()
    assert model.out_channels == channels and model.strides == (8, 16, 32)
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // s, 64 // s) for c, s in zip(channels, model.strides)]


def test_bad_settings_are_input_errors():
    with pytest.raises(P2MInputError, match="depth=34"):
        ResNet(34)
    with pytest.raises(P2MInputError, match="frozen_stages=5"):
        ResNet(18, frozen_stages=5)
