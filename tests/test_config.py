"""Config system: _base_ inheritance, --set overrides, strict validation, resolve/hash."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

import p2m_core.config as config_values
from p2m_core.config import HASH_VERSION, STAGE_KEYS, Config, load_config, resolve, save_config, stage_hash
from p2m_core.errors import P2MInputError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_the_papers_values():
    cfg = Config()
    assert cfg.pseudo.sinkhorn_iters == 80
    assert cfg.pseudo.beta == 0.1
    assert cfg.loss.alpha1 == 3.0 and cfg.loss.alpha2 == 3.0
    assert cfg.model.num_queries == 300
    assert cfg.train.optimizer == "adamw"
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size, cfg.train.epochs) == (1e-4, 0.1, 8, 24)


def test_base_chain_merges_child_over_base(tmp_path):
    write(tmp_path / "a.yaml", "train: {lr: 1.0e-3, epochs: 3}\npseudo: {beta: 0.5}\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\ntrain: {epochs: 5}\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.yaml", "_base_: [../b.yaml]\npseudo: {assignment: mc}\n")
    cfg = load_config(tmp_path / "sub" / "c.yaml")
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 5
    assert cfg.pseudo.beta == 0.5 and cfg.pseudo.assignment == "mc"
    assert cfg.train.batch_size == 8  # untouched default


def test_overrides_parse_yaml_values_and_beat_files(tmp_path):
    path = write(tmp_path / "a.yaml", "train: {lr: 1.0e-3}\n")
    cfg = load_config(path, ["train.lr=2e-4", "pseudo.maps=[semantic, boundary_high]", "data.flip_prob=0"])
    assert cfg.train.lr == pytest.approx(2e-4)
    assert isinstance(cfg.train.lr, float)
    assert cfg.pseudo.maps == ["semantic", "boundary_high"]
    assert cfg.data.flip_prob == 0.0 and isinstance(cfg.data.flip_prob, float)


def test_partial_nested_section_keeps_its_section_defaults():
    cfg = load_config(None, ["data.train.points=custom.json"])
    assert cfg.data.train.points == "custom.json"
    assert cfg.data.train.json == Config().data.train.json != ""
    assert cfg.data.val == Config().data.val


def test_unknown_key_names_file_key_and_value(tmp_path):
    path = write(tmp_path / "bad.yaml", "train:\n  lrate: 0.1\n")
    with pytest.raises(P2MInputError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "train.lrate" in message and "0.1" in message


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yaml", "pseudo: {betta: 1}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(P2MInputError, match=str(base)):
        load_config(child)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=1.5", "integer"),
        ("train.lr=fast", "number"),
        ("pseudo.assignment=greedy", "'ot'"),
        ("pseudo.maps=semantic", "list"),
        ("train.epochs=true", "integer"),
        ("data=3", "mapping"),
    ],
)
def test_wrong_types_are_rejected(override, fragment):
    with pytest.raises(P2MInputError) as info:
        load_config(None, [override])
    assert "--set" in str(info.value) and fragment in str(info.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "broken.yaml", "train:\n  lr: [1, 2\n")
    with pytest.raises(P2MInputError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_circular_base_is_rejected(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(P2MInputError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_bad_override_syntax():
    with pytest.raises(P2MInputError, match="KEY=VALUE"):
        load_config(None, ["train.lr"])


def test_resolve_flat_keys_and_stable_hash():
    a = resolve(load_config(None, ["train.lr=2e-4"]))
    b = resolve(load_config(None, ["train.lr=0.0002", "name=other", "tracking.run_name=x"]))
    c = resolve(load_config(None, ["train.lr=3e-4"]))
    assert a.flat["train.lr"] == 2e-4 and "pseudo.sinkhorn_iters" in a.flat
    assert all("." in k or k in ("name", "seed") for k in a.flat)
    assert a.hash == b.hash and a.stage == "train"  # naming and tracking do not change what a run computes
    assert a.hash != c.hash
    assert len(a.hash) == 16


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["pseudo.k_scheme=nearest_point", "data.crop_size=[96, 96]"])
    path = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(path) == cfg


@pytest.mark.parametrize("path", sorted([*(REPO / "experiments").glob("*.yaml"), *(REPO / "experiments" / "presets").glob("*.yaml")]), ids=lambda p: p.name)
def test_shipped_experiment_configs_load(path):
    # one config dialect: every shipped config, ablation sections included, loads with load_config
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_pseudo_stage_hash_ignores_training_naming_and_execution_settings():
    base = load_config(None)
    same = [
        "train.lr=3e-4", "model.backbone=resnet18", "loss.alpha1=1.0", "name=x", "tracking.experiment=y",
        "ablation.batch_size=2", "ablation.overlays=0", "ablation.device=auto", "data.train_short_side=[64, 64]", "data.test_short_side=64", "seed=5",
    ]
    for override in same:
        assert stage_hash(load_config(None, [override]), "pseudo") == stage_hash(base, "pseudo"), override
    for override in ("pseudo.beta=0.2", "ablation.corruption.seed=1", "data.point_seed=3", "data.root=elsewhere",
                     "ablation.source=oracle", "data.val.json=other.json"):
        assert stage_hash(load_config(None, [override]), "pseudo") != stage_hash(base, "pseudo"), override
    # the training hash does see the learning rate; the two stages never share a hash
    assert stage_hash(load_config(None, ["train.lr=3e-4"]), "train") != stage_hash(base, "train")
    assert stage_hash(base, "train") != stage_hash(base, "pseudo")


def test_stage_hash_carries_the_version(monkeypatch):
    import p2m_core.config.hashing as config_module

    cfg = load_config(None)
    before = stage_hash(cfg, "pseudo")
    monkeypatch.setattr(config_module, "HASH_VERSION", HASH_VERSION + 1)
    assert stage_hash(cfg, "pseudo") != before
    assert set(STAGE_KEYS) == {"pseudo", "train"}
    with pytest.raises(P2MInputError, match="unknown stage 'eval'"):
        stage_hash(cfg, "eval")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("ablation.corruption.boundary_drop=1.5", "key 'ablation.corruption.boundary_drop' expects a number in [0, 1], got 1.5"),
        ("pseudo.graph_stride=6", "key 'pseudo.graph_stride' expects a multiple of pseudo.mask_stride (4), got 6"),
        ("pseudo.maps=[boundary_low]", "key 'pseudo.maps' expects a list with 'semantic'"),
        ("pseudo.sinkhorn_epsilon=0", "key 'pseudo.sinkhorn_epsilon' expects a number > 0"),
        ("ablation.source=checkpoint", "key 'ablation.checkpoint' expects a model file path"),
        ("ablation.batch_size=0", "key 'ablation.batch_size' expects an integer >= 1"),
        ("ablation.source=magic", "one of 'oracle', 'oracle_corrupt', 'image', 'checkpoint'"),
    ],
)
def test_out_of_range_values_name_source_key_and_value(override, fragment):
    with pytest.raises(P2MInputError) as info:
        load_config(None, [override])
    assert fragment in str(info.value) and str(info.value).startswith("--set")


def test_range_error_in_a_file_names_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("ablation:\n  corruption: {semantic_noise_std: -1}\n")
    with pytest.raises(P2MInputError, match=r"config .*bad\.yaml: key 'ablation\.corruption\.semantic_noise_std'"):
        load_config(tmp_path / "bad.yaml")


def test_allowed_values_are_defined_once():
    from p2m_core.pseudo import geodesic, transport

    assert transport.SINKHORN_MODES is config_values.SINKHORN_MODES
    assert geodesic.BACKENDS is config_values.GEODESIC_BACKENDS
    hints = typing.get_type_hints(config_values.PseudoConfig)
    for key, allowed in (
        ("k_scheme", config_values.K_SCHEMES), ("assignment", config_values.ASSIGNMENTS),
        ("mc_decode", config_values.MC_DECODES), ("k_ranking", config_values.K_RANKINGS),
        ("centroid_rule", config_values.CENTROID_RULES), ("warmup_assignment", config_values.WARMUP_ASSIGNMENTS),
        ("map_resize", config_values.MAP_RESIZES), ("pixel_roles", config_values.PIXEL_ROLES),
        ("ot_pixels", config_values.OT_PIXELS), ("sinkhorn_mode", config_values.SINKHORN_MODES),
    ):
        assert typing.get_args(hints[key]) == allowed, key


def test_sinkhorn_defaults_are_written_once():
    """The solvers' keyword defaults are the config's: a solver called bare runs what a default
    config runs."""
    import inspect

    from p2m_core.pseudo.newton import sinkhorn_converged
    from p2m_core.pseudo.sinkhorn_reference import sinkhorn_reference
    from p2m_core.pseudo.transport import sinkhorn

    cfg = config_values.PseudoConfig()
    expected = {
        "epsilon": cfg.sinkhorn_epsilon, "raw_epsilon": cfg.sinkhorn_epsilon, "relative_epsilon": cfg.sinkhorn_epsilon,
        "num_iters": cfg.sinkhorn_iters, "tol": cfg.sinkhorn_tol, "max_iters": cfg.sinkhorn_max_iters,
    }
    for fn in (sinkhorn, sinkhorn_reference, sinkhorn_converged):
        params = inspect.signature(fn).parameters
        for name, value in expected.items():
            if name in params:
                assert params[name].default == value, (fn.__name__, name)
    assert (cfg.sinkhorn_epsilon, cfg.sinkhorn_iters, cfg.sinkhorn_tol, cfg.sinkhorn_max_iters) == (1e-3, 80, 1e-3, 2000)


def test_pseudo_section_checks_itself_when_built():
    """Code that builds the section directly gets the loader's check, named by the class."""
    with pytest.raises(P2MInputError, match=r"PseudoConfig: key 'pseudo\.k_ranking' expects one of 'argmin', 'likelihood', got 'median'"):
        config_values.PseudoConfig(k_ranking="median")
    with pytest.raises(P2MInputError, match=r"PseudoConfig: key 'pseudo\.stuff_void_threshold' expects a number in \[0, 1\], got 2\.0"):
        config_values.PseudoConfig(stuff_void_threshold=2.0)
    with pytest.raises(P2MInputError, match=r"key 'pseudo\.graph_stride' expects a multiple of pseudo\.mask_stride"):
        dataclasses.replace(config_values.PseudoConfig(), graph_stride=6)
