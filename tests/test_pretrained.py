"""``model.pretrained``: local files, torchvision names from a checked cache, downloads, random init.

Nothing here reaches the internet: names resolve from a registry whose URLs point at 127.0.0.1
(a closed port for "offline", a local HTTP server for downloads), with files whose SHA-256
prefix is computed here, as torchvision computes the prefix in its file names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import logging
import re
import threading
import typing
from pathlib import Path

import pytest
import torch

from p2m_core.config import ModelConfig, load_config
from p2m_core.errors import P2MInputError
from p2m_core.model.backbone import ResNet
from p2m_core.model.point2mask import ClassInfo, build_model
from p2m_core.model.pretrained import (
    DEFAULT_VERSION,
    TORCHVISION_WEIGHTS,
    NamedWeights,
    check_pretrained,
    init_backbone,
    is_weights_name,
    main,
    resolve_pretrained,
    weights_dir,
)
from tests.test_backbone import imagenet_file

REPO = Path(__file__).resolve().parents[1]
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def published(tmp_path, arch: str = "resnet18", base: str = CLOSED, width: int = 64, real: bool = False):
    """A file and a registry naming it as torchvision would: ``<arch>-<first 8 hex digits of its
    SHA-256>.pth`` at ``base``. ``real``: a torchvision-format checkpoint (else a few bytes, for
    tests that never load it)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    if real:
        path, state = imagenet_file(src, depth=int(arch.removeprefix("resnet")), width=width)
    else:
        path, state = src / "blob.pth", None
        path.write_bytes(b"weights of " + arch.encode() * 1000)
    entry = NamedWeights(arch, "IMAGENET1K_V1", f"{base}/{arch}-{sha256(path)[:8]}.pth")
    return path, state, entry, {f"torchvision:{arch}": entry, entry.name: entry}


# --------------------------------------------------------------------------- the table
def test_table_is_torchvisions_published_files():
    urls = {name: w.url for name, w in TORCHVISION_WEIGHTS.items()}
    assert urls["torchvision:resnet50"] == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"  # the release's
    assert urls["torchvision:resnet50.IMAGENET1K_V1"] == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert urls["torchvision:resnet18"] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert urls["torchvision:resnet101"] == "https://download.pytorch.org/models/resnet101-cd907fc2.pth"
    assert urls["torchvision:resnet101.IMAGENET1K_V1"] == "https://download.pytorch.org/models/resnet101-63fe2227.pth"
    for name, w in TORCHVISION_WEIGHTS.items():
        assert re.fullmatch(rf"{w.arch}-[0-9a-f]{{8}}\.pth", w.file_name) and w.file_name.endswith(f"-{w.sha256_prefix}.pth")
        assert name in (w.name, f"torchvision:{w.arch}")
    assert set(DEFAULT_VERSION) == set(typing.get_args(typing.get_type_hints(ModelConfig)["backbone"]))
    assert is_weights_name("torchvision") and is_weights_name("torchvision:resnet50")
    assert not is_weights_name("") and not is_weights_name("torchvision.pth") and not is_weights_name("/w/torchvision")


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("P2M_WEIGHTS_DIR", str(tmp_path / "w"))
    assert weights_dir() == tmp_path / "w"
    monkeypatch.delenv("P2M_WEIGHTS_DIR")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))  # torchvision's own cache is reused
    assert weights_dir() == tmp_path / "th" / "hub" / "checkpoints"


def test_shipped_configs_name_their_weights():
    for name in ("voc.yaml", "coco.yaml", "presets/paper.yaml", "presets/release.yaml"):
        assert load_config(REPO / "experiments" / name).model.pretrained == "torchvision:resnet50", name
    for name in ("presets/synthetic_tiny.yaml", "train_tiny.yaml"):  # random init, asked for
        assert load_config(REPO / "experiments" / name).model.pretrained == "", name
    assert ModelConfig().pretrained == "torchvision"  # the default weights of model.backbone


# --------------------------------------------------------------------------- resolving
def test_local_file_loads(tmp_path):
    path, state, _, _ = published(tmp_path, width=8, real=True)
    model = ResNet(18, width=8)
    assert init_backbone(model, str(path), "resnet18") == path
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_name_resolves_from_the_cache_and_loads(tmp_path, monkeypatch):
    path, state, entry, registry = published(tmp_path, real=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / entry.file_name).write_bytes(path.read_bytes())
    monkeypatch.setenv("P2M_WEIGHTS_DIR", str(cache))
    for value in ("torchvision", "torchvision:resnet18", "torchvision:resnet18.IMAGENET1K_V1"):
        assert resolve_pretrained(value, "resnet18", 64, registry) == cache / entry.file_name
    model = ResNet(18, width=64)
    init_backbone(model, "torchvision:resnet18", "resnet18", registry)  # the port is closed: no download tried
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[0].bn1.running_var, state["layer4.0.bn1.running_var"])


def test_cached_file_with_the_wrong_hash_is_refused(tmp_path):
    path, _, entry, registry = published(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = cache / entry.file_name
    bad.write_bytes(path.read_bytes()[:-10])  # a partial download
    with pytest.raises(P2MInputError) as err:
        resolve_pretrained("torchvision:resnet18", "resnet18", 64, registry, cache)
    message = str(err.value)
    assert "model.pretrained='torchvision:resnet18'" in message and str(bad) in message
    assert entry.sha256_prefix in message and "delete it" in message
    assert bad.read_bytes() == path.read_bytes()[:-10]  # left for the user to look at


def test_offline_without_cache_names_the_key_the_folder_and_the_command(tmp_path):
    _, _, entry, registry = published(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(P2MInputError) as err:
        resolve_pretrained("torchvision:resnet18", "resnet18", 64, registry, cache)
    message = str(err.value)
    assert "model.pretrained='torchvision:resnet18'" in message and f"weights cache {cache}" in message
    assert f"curl -L --create-dirs -o {cache / entry.file_name} {entry.url}" in message
    assert f"python -m p2m_core.model.pretrained --download {entry.name} --dir {cache}" in message
    assert "P2M_WEIGHTS_DIR" in message
    assert [p.name for p in cache.iterdir()] == []  # no partial file left behind


@pytest.fixture
def http_folder(tmp_path):
    """A local HTTP server over a folder: ``(folder, base URL)``."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_missing_file_is_downloaded_checked_and_cached(tmp_path, http_folder):
    served, base = http_folder
    path, state, entry, registry = published(tmp_path, base=base)
    (served / entry.file_name).write_bytes(path.read_bytes())
    cache = tmp_path / "cache" / "nested"
    got = resolve_pretrained("torchvision:resnet18", "resnet18", 64, registry, cache)
    assert got == cache / entry.file_name and got.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [entry.file_name]  # renamed into place, no temporary left
    (served / entry.file_name).unlink()  # the second time comes from the cache
    assert resolve_pretrained("torchvision:resnet18", "resnet18", 64, registry, cache) == got

    # a server handing out other bytes under the name: refused, nothing kept
    other = cache.parent / "other"
    (served / entry.file_name).write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(P2MInputError, match=rf"model.pretrained='torchvision:resnet18': .*SHA-256.*not {entry.sha256_prefix}"):
        resolve_pretrained("torchvision:resnet18", "resnet18", 64, registry, other)
    assert list(other.iterdir()) == []


def test_cli_downloads_into_a_folder(tmp_path, http_folder, monkeypatch, capsys):
    served, base = http_folder
    path, _, entry, registry = published(tmp_path, base=base)
    (served / entry.file_name).write_bytes(path.read_bytes())
    monkeypatch.setattr("p2m_core.model.pretrained.TORCHVISION_WEIGHTS", registry)
    assert main(["--download", "torchvision:resnet18", "--dir", str(tmp_path / "w")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "w" / entry.file_name)
    assert main(["--dir", str(tmp_path / "w")]) == 0
    listing = capsys.readouterr().out
    assert f"cache: {tmp_path / 'w'}" in listing and re.search(rf"torchvision:resnet18 +{entry.file_name} +cached", listing)
    assert main(["--download", "torchvision:resnet34", "--dir", str(tmp_path / "w")]) == 2
    assert "not a known name" in capsys.readouterr().err


# --------------------------------------------------------------------------- refusals
def test_names_must_fit_the_backbone_and_width(tmp_path):
    with pytest.raises(P2MInputError, match=r"model.width is 8; ImageNet weights only fit model.width=64"):
        check_pretrained("torchvision:resnet18", "resnet18", 8)
    with pytest.raises(P2MInputError, match=r"holds resnet50 weights but model.backbone is 'resnet101'.*torchvision:resnet101"):
        check_pretrained("torchvision:resnet50", "resnet101", 64)
    with pytest.raises(P2MInputError, match=r"'torchvision:resnet34' is not a known name; known: .*torchvision:resnet50"):
        check_pretrained("torchvision:resnet34", "resnet50", 64)
    with pytest.raises(P2MInputError, match=r"a URL is not accepted.*\(this URL is torchvision:resnet50\)"):
        check_pretrained("https://download.pytorch.org/models/resnet50-11ad3fa6.pth", "resnet50", 64)
    with pytest.raises(P2MInputError, match=r"model.pretrained=.*nowhere.pth.*no such file"):
        check_pretrained(str(tmp_path / "nowhere.pth"), "resnet50", 64)
    check_pretrained("torchvision", "resnet101", 64)  # the default follows model.backbone; nothing is read
    check_pretrained("", "resnet18", 8)


def test_a_tiny_network_with_a_name_fails_before_any_download(tmp_path):
    cfg = load_config(REPO / "experiments" / "presets" / "synthetic_tiny.yaml", ["model.pretrained=torchvision"])
    with pytest.raises(P2MInputError, match="model.width is 8"):
        build_model(cfg.model, ClassInfo((True, False)))


# --------------------------------------------------------------------------- random init
def test_random_init_warns_about_frozen_statistics(caplog):
    cfg = load_config(REPO / "experiments" / "presets" / "synthetic_tiny.yaml")
    with caplog.at_level(logging.WARNING, logger="p2m_core.model.pretrained"):
        build_model(cfg.model, ClassInfo((True, False)))
    [record] = [r for r in caplog.records if r.name == "p2m_core.model.pretrained"]
    assert record.levelno == logging.WARNING
    assert "model.pretrained is empty" in record.getMessage() and "frozen" in record.getMessage()

    caplog.clear()  # a network rebuilt for a checkpoint's weights neither loads nor warns
    with caplog.at_level(logging.WARNING, logger="p2m_core.model.pretrained"):
        build_model(dataclasses.replace(cfg.model, pretrained="torchvision:resnet50"), ClassInfo((True, False)),
                    load_weights=False)  # fmt: skip
    assert not caplog.records


# --------------------------------------------------------------------------- launchers
def test_training_sweeps_keep_names_and_check_every_trial(tmp_path):
    import yaml

    from p2m_core.data.synthetic import generate_synthetic
    from ray_jobs.spec import expand_trials, load_spec

    root = tmp_path / "data"
    generate_synthetic(root, num_train=4, num_val=2, size=48, seed=1, progress=False, num_test=2)
    (tmp_path / "imagenet.pth").write_bytes(b"x")

    def spec(grid, fixed):
        path = tmp_path / "spec.yaml"
        fixed = {"model.backbone_norm": "frozen_bn", **fixed}  # ImageNet weights fit the frozen batch norm only
        path.write_text(yaml.safe_dump({"base": str(REPO / "experiments" / "train_tiny.yaml"), "stage": "train",
                                        "split": "val", "grid": grid, "set": fixed, "seeds": [0],
                                        "mlflow_experiment": "test"}))  # fmt: skip
        return load_spec(path)

    backbones = {"model.backbone": ["resnet18", "resnet50"]}
    trials = expand_trials(spec(backbones, {"model.width": 64, "model.pretrained": "torchvision"}),
                           [f"data.root={root}"], launch_dir=tmp_path)  # fmt: skip
    assert [t.config.model.pretrained for t in trials] == ["torchvision", "torchvision"]  # a name, not a path
    trials = expand_trials(spec(backbones, {"model.pretrained": "imagenet.pth"}), [f"data.root={root}"], launch_dir=tmp_path)
    assert trials[0].config.model.pretrained == str(tmp_path / "imagenet.pth")  # a file: made absolute
    with pytest.raises(P2MInputError, match=r"sweep spec .*\(backbone=resnet50\): model.pretrained='torchvision:resnet18' holds resnet18"):
        expand_trials(spec(backbones, {"model.width": 64, "model.pretrained": "torchvision:resnet18"}),
                      [f"data.root={root}"], launch_dir=tmp_path)  # fmt: skip
