"""The config's sections: one dataclass per section, its fields' types, defaults and range rules.

Defaults are the paper's values (Sec. 4.2; docs/METHOD.md, "Paper tables and the sweeps that
answer them") where the paper gives one; elsewhere they are documented beside the field. A
section's ``invalid_fields`` lists the range rules its fields break; the loader
(:mod:`p2m_core.config.loading`) checks them, and the types, when it builds a section from a file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from p2m_core.config.checks import check_section
from p2m_core.config.choices import (
    Assignment,
    BackboneNorm,
    CentroidRule,
    Device,
    GeodesicBackend,
    KRanking,
    KScheme,
    MapName,
    MapResize,
    MapSourceKind,
    McDecode,
    OtPixels,
    PixelRoles,
    PointsFrom,
    SemanticTerm,
    SinkhornMode,
    SplitName,
    WarmupAssignment,
)
from p2m_core.config.defaults import SINKHORN_EPSILON, SINKHORN_ITERS, SINKHORN_MAX_ITERS, SINKHORN_TOL


@dataclass
class SplitConfig:
    """Files of one split in the COCO panoptic format (paths relative to ``data.root``)."""

    json: str = ""
    images: str = ""
    panoptic: str = ""
    points: str = ""  # point labels JSON (p2m_core.data.points); empty: sample on the fly


def coco_layout(split: str) -> SplitConfig:
    """COCO's file layout of a split under a dataset root: ``panoptic_<split>.json`` beside its
    PNG folder ``panoptic_<split>/``, images in ``images/<split>/``, points in
    ``points_<split>.json``. The default of ``data.<split>``, and what the synthetic generator
    and the VOC converter write (docs/DATA.md)."""
    return SplitConfig(f"panoptic_{split}.json", f"images/{split}", f"panoptic_{split}", f"points_{split}.json")


@dataclass
class SyntheticConfig:
    """The built-in synthetic panoptic dataset (``python -m p2m_core.data.synthetic``)."""

    num_train: int = 48
    num_val: int = 16
    num_test: int = 0
    size: int = 128
    seed: int = 0


@dataclass
class DataConfig:
    dataset: Literal["synthetic", "coco_panoptic"] = "synthetic"
    root: str = "data/synthetic"
    # COCO's layout: panoptic_<split>.json beside its PNG folder panoptic_<split>/.
    train: SplitConfig = field(default_factory=lambda: coco_layout("train"))
    val: SplitConfig = field(default_factory=lambda: coco_layout("val"))
    # held out: settings are chosen on val, the numbers reported on test (docs/METHOD.md)
    test: SplitConfig = field(default_factory=lambda: coco_layout("test"))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    point_seed: int = 0  # seed of the one-point-per-segment sampling
    num_classes: int = 0  # categories the data must have (COCO 133, VOC 21); 0: whatever it has
    # Image scales (p2m_core.data.dataset.build_transforms). Training: the shorter side is drawn
    # from train_short_side [low, high] in steps of train_short_step, the longer side capped at
    # long_side_max; then a random flip and, when crop_size is set, a random crop (points that
    # fall out of it are dropped). val / test: the shorter side at test_short_side, the longer
    # side capped at long_side_max. Predictions are scored at each image's original size.
    train_short_side: list[int] = field(default_factory=lambda: [128, 128])
    train_short_step: int = 1
    long_side_max: int = 1333
    test_short_side: int = 128
    flip_prob: float = 0.5
    crop_size: list[int] = field(default_factory=list)  # [h, w]; empty: no crop
    size_divisor: int = 32
    # P^b_low: path to OpenCV's Structured Edge forest (model.yml.gz); empty: classical fallback.
    edge_model: str = ""
    num_workers: int = 0

    def invalid_fields(self) -> list[tuple[str, str]]:
        bad = []
        low_high = self.train_short_side
        if len(low_high) != 2 or not 1 <= low_high[0] <= low_high[1]:
            bad.append(("train_short_side", "[low, high] with 1 <= low <= high"))
        for name in ("train_short_step", "long_side_max", "test_short_side"):
            if getattr(self, name) < 1:
                bad.append((name, "an integer >= 1"))
        if self.crop_size and (len(self.crop_size) != 2 or min(self.crop_size) < 1):
            bad.append(("crop_size", "[h, w] of positive integers, or empty"))
        if not 0.0 <= self.flip_prob <= 1.0:
            bad.append(("flip_prob", "a number in [0, 1]"))
        return bad


@dataclass
class PseudoConfig:
    """Pseudo-label generation by optimal transport (paper Sec. 3.2-3.3; docs/METHOD.md).

    The defaults are the paper's reading. The fields from ``k_ranking`` to ``ot_pixels`` switch
    each step to what the authors' release does instead (docs/METHOD.md, "The release's
    pseudo-label variant"); ``experiments/presets/release.yaml`` selects all of them.
    """

    maps: list[MapName] = field(default_factory=lambda: ["semantic", "boundary_low", "boundary_high"])
    beta: float = 0.1  # weight of boundary terms in the edge length, Eq. 3 (paper)
    # weight of the embedding's pairwise term max(0, 1 - <e_p, e_q>) (the release's projector
    # term, TaskMaps.embedding) and of optional per-pixel extra edge maps (TaskMaps.extra)
    extra_weight: float = 0.1
    # Strides relative to the *input image*: the reference builds the graph at 1/16 and
    # predicts masks at 1/4, so the graph is 1/4 of the mask resolution.
    graph_stride: int = 16
    mask_stride: int = 4
    k_scheme: KScheme = "nearest_centroid"
    centroid_iters: int = 1  # paper Table 6; main experiments use 1
    assignment: Assignment = "ot"
    mc_decode: McDecode = "argmin"
    sinkhorn_iters: int = SINKHORN_ITERS  # paper Sec. 4.2
    # The entropic regularisation. Its unit depends on sinkhorn_mode: raw cost units in
    # reference mode (the reference code's 1e-3), a fraction of the image's largest cost in
    # converged mode (the solver normalises the costs per image); docs/METHOD.md, "The converged
    # solver". One key for both keeps the config hashes; the code names the two meanings apart.
    sinkhorn_epsilon: float = SINKHORN_EPSILON
    sinkhorn_tol: float = SINKHORN_TOL  # marginal tolerance of the converged solver
    sinkhorn_max_iters: int = SINKHORN_MAX_ITERS  # cap of the converged solver
    sinkhorn_mode: SinkhornMode = "reference"
    geodesic_backend: GeodesicBackend = "torch"
    point_dilation: int = 17  # reference: labelled points forced into P^s as 17x17 squares
    # Training iterations that use the warm-up assignment instead of OT (reference: 12k on VOC,
    # 60k on COCO); warmup_assignment says what that assignment is.
    warmup_iters: int = 0
    warmup_assignment: WarmupAssignment = "mc"  # release: its Sinkhorn, nearest-point k, all pixels
    # How nearest_point / nearest_centroid rank the transported pixels among the points: minimum
    # cost (paper) or the release's (1 - normalised distance) x class likelihood.
    k_ranking: KRanking = "argmin"
    centroid_rule: CentroidRule = "paper"  # release: truncated centre of mass, corner check
    map_resize: MapResize = "area"  # maps to the graph: f x f block means, or the release's bilinear
    pixel_roles: PixelRoles = "evidence"  # argmax: the release's plain argmax over all classes
    ot_pixels: OtPixels = "transported"  # all: the release's plan over every pixel, stuff demand 0
    force_own_pixels: bool = True  # the release never forces a point's own pixel
    stuff_void_threshold: float = 0.0  # stuff pixels void where max P^s < this (release: 0.5)
    # The embedding is unit length again after its resize to the graph (a mean of unit vectors is
    # shorter); the release uses the resized vectors as they are.
    renormalise_embedding: bool = True

    def __post_init__(self) -> None:
        # The pipeline takes this section from code too (the model, benchmarks, tests), not only
        # from files: checked here, once, when built, it never needs checking where it is used.
        check_section(self, "pseudo.")

    def invalid_fields(self) -> list[tuple[str, str]]:
        """(field, expectation) pairs this section violates; empty when valid."""
        bad = []
        if "semantic" not in self.maps or len(set(self.maps)) != len(self.maps):
            bad.append(("maps", "a list with 'semantic' and no repeats"))
        for name in ("graph_stride", "mask_stride", "centroid_iters", "sinkhorn_iters", "sinkhorn_max_iters", "point_dilation"):
            if getattr(self, name) < 1:
                bad.append((name, "an integer >= 1"))
        if self.graph_stride >= 1 and self.mask_stride >= 1 and self.graph_stride % self.mask_stride:
            bad.append(("graph_stride", f"a multiple of pseudo.mask_stride ({self.mask_stride})"))
        for name in ("sinkhorn_epsilon", "sinkhorn_tol"):
            if not getattr(self, name) > 0:
                bad.append((name, "a number > 0"))
        for name in ("beta", "extra_weight"):
            if not getattr(self, name) >= 0:
                bad.append((name, "a number >= 0"))
        if self.warmup_iters < 0:
            bad.append(("warmup_iters", "an integer >= 0"))
        if not 0.0 <= self.stuff_void_threshold <= 1.0:
            bad.append(("stuff_void_threshold", "a number in [0, 1]"))
        return bad


@dataclass
class CorruptionConfig:
    """How ``oracle_corrupt`` degrades the ground-truth maps (docs/METHOD.md, "The pseudo-label
    ablation stage"). Sigmas are in mask pixels. The defaults give maps that are clearly imperfect
    but still informative: a softened semantic map, a third of the boundaries missing."""

    semantic_blur_sigma: float = 1.0
    semantic_noise_std: float = 0.1
    boundary_drop: float = 0.3  # fraction of boundary pixels set to 0
    boundary_blur_sigma: float = 1.0
    seed: int = 0  # with the image id, seeds each image's corruption

    def invalid_fields(self) -> list[tuple[str, str]]:
        bad = [(n, "a number >= 0") for n in ("semantic_blur_sigma", "semantic_noise_std", "boundary_blur_sigma")
               if not getattr(self, n) >= 0]
        if not 0.0 <= self.boundary_drop <= 1.0:
            bad.append(("boundary_drop", "a number in [0, 1]"))
        if self.seed < 0:
            bad.append(("seed", "an integer >= 0"))
        return bad


@dataclass
class AblationConfig:
    """The pseudo-label stage: pseudo masks made from maps of known quality and scored against
    the ground truth, without training (docs/METHOD.md, "The pseudo-label ablation stage")."""

    source: MapSourceKind = "oracle_corrupt"
    checkpoint: str = ""  # model file for source=checkpoint
    split: SplitName = "val"
    # sample: one uniform point per segment drawn with data.point_seed (what a seed sweep varies);
    # file: the split's point file (data.<split>.points), which must exist.
    points: PointsFrom = "sample"
    max_images: int = 0  # 0: every image of the split
    void_semantic: Literal["zero", "uniform"] = "zero"  # P^s on void pixels of the oracle
    oracle_boundary_low: Literal["gt", "edges", "none"] = "gt"  # P^b_low of the oracle sources
    # Make P^s cost-ready as the training loop does (classes without a point zeroed, points
    # forced to their class; p2m_core.pseudo.maps.semantic_cost_map).
    cost_ready: bool = True
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    # Execution only (left out of the hash, see STAGE_KEYS): they change speed and artifacts,
    # not the metrics.
    batch_size: int = 8  # images per generate_pseudo_labels call
    overlays: int = 4  # PNG overlays of the first N images
    device: Device = "cpu"

    def invalid_fields(self) -> list[tuple[str, str]]:
        bad = []
        if self.source == "checkpoint" and not self.checkpoint:
            bad.append(("checkpoint", "a model file path when ablation.source is 'checkpoint'"))
        for name, low in (("max_images", 0), ("batch_size", 1), ("overlays", 0)):
            if getattr(self, name) < low:
                bad.append((name, f"an integer >= {low}"))
        return bad


@dataclass
class InferenceConfig:
    """How the panoptic head's outputs become one prediction per image (the release's rules;
    docs/METHOD.md, "The network")."""

    top_k: int = 100  # (query, thing class) pairs kept
    mask_threshold: float = 0.5
    score_threshold: float = 0.25  # release; 0.3 for its VOC Swin-L model
    thing_overlap: float = 0.4  # a thing is skipped when more of its area than this is painted
    stuff_overlap: float = 0.2

    def invalid_fields(self) -> list[tuple[str, str]]:
        bad = [("top_k", "an integer >= 1")] if self.top_k < 1 else []
        for name in ("mask_threshold", "score_threshold", "thing_overlap", "stuff_overlap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad.append((name, "a number in [0, 1]"))
        return bad


@dataclass
class ModelConfig:
    """The network (docs/METHOD.md, "The network"); defaults are the paper's ResNet-50 model."""

    backbone: Literal["resnet18", "resnet50", "resnet101"] = "resnet50"
    width: int = 64  # channels of the backbone's first stage (64 = torchvision; 8 for a tiny CPU model)
    # the backbone's start (p2m_core/model/pretrained.py): "torchvision" = torchvision's ImageNet weights for
    # `backbone`, "torchvision:<arch>[.<version>]", a local torchvision-format state dict, or "" = random init
    pretrained: str = "torchvision"
    frozen_stages: int = 1  # release: stem and stage 1 frozen (BN frozen everywhere)
    # The trunk's normalisation: frozen_bn (the release: ImageNet statistics, never updated) or
    # group_norm (trainable, for a backbone trained from scratch: a frozen norm with random
    # statistics is the identity, and an unnormalised ResNet trains slowly).
    backbone_norm: BackboneNorm = "frozen_bn"
    hidden_dim: int = 256
    num_heads: int = 8
    num_points: int = 4  # deformable sampling points per head and level
    ffn_dim: int = 1024
    dropout: float = 0.1
    encoder_layers: int = 6
    num_queries: int = 300  # paper Sec. 4.2
    num_decoder_layers: int = 6  # location decoder
    semantic_layers: int = 6
    thing_layers: int = 4
    stuff_layers: int = 6
    projector: bool = True  # the manifold projector and its pairwise edge term
    projector_dim: int = 128
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def invalid_fields(self) -> list[tuple[str, str]]:
        bad = []
        for name in ("width", "hidden_dim", "num_heads", "num_points", "ffn_dim", "encoder_layers", "num_queries",
                     "num_decoder_layers", "semantic_layers", "thing_layers", "stuff_layers", "projector_dim"):
            if getattr(self, name) < 1:
                bad.append((name, "an integer >= 1"))
        if self.hidden_dim >= 1 and self.num_heads >= 1 and self.hidden_dim % self.num_heads:
            bad.append(("hidden_dim", f"a multiple of model.num_heads ({self.num_heads})"))
        if not 0 <= self.frozen_stages <= 4:
            bad.append(("frozen_stages", "an integer in [0, 4]"))
        if self.backbone_norm != "frozen_bn" and self.pretrained:
            bad.append(("pretrained", "'' with model.backbone_norm group_norm (ImageNet weights carry frozen batch-norm statistics)"))
        if not 0.0 <= self.dropout < 1.0:
            bad.append(("dropout", "a number in [0, 1)"))
        return bad


@dataclass
class LossConfig:
    """Loss terms and weights (paper Sec. 3.4; docs/METHOD.md, "Losses"). Where the paper gives
    no number the release's is used and marked."""

    # Table 4: which terms train P^s (the presence focal loss always does).
    semantic_terms: list[SemanticTerm] = field(default_factory=lambda: ["partial", "lab", "rgb_tree"])
    presence_weight: float = 2.0  # release
    alpha1: float = 3.0  # weight of the local LAB affinity loss, Eq. 5 (paper)
    alpha2: float = 3.0  # weight of the long-range RGB tree loss, Eq. 5 (paper)
    lab_threshold: float = 0.3  # release: a neighbour pair counts when its colour similarity >= this
    tree_sigma: float = 0.02  # release: edge strength exp(-||dI||^2 / sigma) of the tree filter
    boundary_weight: float = 1.0
    projector_weight: float = 1.0  # release
    projector_temperature: float = 0.07  # release
    # Panoptic branch (release; Panoptic SegFormer's values).
    focal_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    dice_weight: float = 2.0  # thing masks
    stuff_dice_weight: float = 2.0
    stuff_presence_weight: float = 4.0
    # The release's weighting (docs/METHOD.md, "Losses"): terms scaled by the batch's share of
    # thing / stuff targets, most ramped in linearly over ramp_iters. Off: the paper states none.
    release_weighting: bool = False
    ramp_iters: int = 14659  # release

    def invalid_fields(self) -> list[tuple[str, str]]:
        bad = [(f.name, "a number >= 0") for f in dataclasses.fields(self)
               if f.name.endswith(("weight", "alpha1", "alpha2")) and not getattr(self, f.name) >= 0]  # fmt: skip
        for name in ("tree_sigma", "projector_temperature"):
            if not getattr(self, name) > 0:
                bad.append((name, "a number > 0"))
        if not 0.0 <= self.lab_threshold <= 1.0:
            bad.append(("lab_threshold", "a number in [0, 1]"))
        if self.ramp_iters < 1:
            bad.append(("ramp_iters", "an integer >= 1"))
        return bad


@dataclass
class TrainConfig:
    optimizer: Literal["adamw"] = "adamw"  # paper
    lr: float = 1e-4  # paper, VOC (COCO: 2e-4)
    weight_decay: float = 0.1  # paper, VOC
    # The global batch (paper, VOC; COCO: 16), split evenly over train.workers: lr stays the
    # paper's for this batch whatever the number of workers.
    batch_size: int = 8
    epochs: int = 24  # paper, VOC (COCO: 15)
    lr_steps: list[int] = field(default_factory=list)  # epochs; paper COCO: [8, 12]
    grad_clip: float = 0.1  # max L2 norm of the gradient; 0: no clipping
    # Learning-rate factors (release: 0.1 for both; paper: none)
    lr_backbone_mult: float = 1.0
    lr_offsets_mult: float = 1.0  # deformable sampling offsets and reference points
    device: Device = "auto"
    log_every: int = 10  # iterations between per-step metric batches sent to MLflow
    # Length, evaluation and checkpoints of a run (iterations count optimiser steps)
    iters: int = 0  # total iterations; 0: epochs x iterations per epoch
    eval_every: int = 0  # iterations between evaluations on the val split; 0: at the end only
    eval_images: int = 0  # val images per evaluation; 0: all
    # Scored once after the last iteration (metrics test/PQ, ...): the held-out numbers a table
    # reports, while the val evaluations choose settings. Empty: none (VOC, COCO: val is the
    # paper's report split).
    test_split: Literal["", "train", "val", "test"] = ""
    overlays: int = 2  # pseudo-mask overlays logged per evaluation
    checkpoint_every: int = 0  # iterations between checkpoints; 0: with each evaluation
    amp: bool = False  # bfloat16/float16 autocast on CUDA; ignored on CPU
    # Ray Train
    workers: int = 1  # data-parallel workers; each takes batch_size / workers images a step
    max_failures: int = 2  # restarts of the worker group from its last checkpoint before the run fails
    storage_path: str = ""  # checkpoints: a folder or a pyarrow URI (s3://...); empty: <tracking.output_dir>/ray

    def invalid_fields(self) -> list[tuple[str, str]]:
        bad = [(n, "a number > 0") for n in ("lr",) if not self.lr > 0]
        bad += [(n, "a number >= 0") for n in ("weight_decay", "grad_clip", "lr_backbone_mult", "lr_offsets_mult")
                if not getattr(self, n) >= 0]  # fmt: skip
        bad += [(n, "an integer >= 1") for n in ("batch_size", "epochs", "workers", "log_every") if getattr(self, n) < 1]
        if self.workers >= 1 and self.batch_size % self.workers:
            bad.append(("batch_size", f"a multiple of train.workers ({self.workers}): it is the global batch, split over the workers"))
        bad += [(n, "an integer >= 0") for n in ("iters", "eval_every", "eval_images", "overlays", "checkpoint_every", "max_failures")
                if getattr(self, n) < 0]  # fmt: skip
        return bad


@dataclass
class TrackingConfig:
    # Empty: sqlite:///<output_dir>/mlflow.db (absolute, since Ray changes worker cwds).
    tracking_uri: str = ""
    experiment: str = "p2m"
    run_name: str = ""
    output_dir: str = "runs"
    # Seconds a tracking server may stay unreachable (connection refused, timeouts, HTTP 5xx)
    # before a training run or trial fails; until then metrics are queued and retried
    # (docs/TRACKING.md, "When the tracking server goes away"). A failed run resumes from its
    # checkpoint when its command is run again.
    outage_limit_s: float = 600.0

    def invalid_fields(self) -> list[tuple[str, str]]:
        return [] if self.outage_limit_s > 0 else [("outage_limit_s", "a number of seconds > 0")]


@dataclass
class Config:
    name: str = "point2mask"
    # The run's seed: the network's initial weights, the data order and every augmentation draw.
    # data.point_seed draws the points; a training sweep's seed sets both (ray_jobs/spec.py).
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

