"""The criterion's loss terms against plain transcriptions of the authors' release's formulas.

One forward pass of the tiny network on two synthetic images, one of them cropped so that the
batch carries padding; each criterion test recomputes one named term from the network's outputs
the way the release computes it (written out here; its divisors counted here, not by
``p2m_core.losses.normalise``) and compares it with what
:func:`~p2m_core.model.criterion.point2mask_losses` returned. The function-level tests check a
loss function against a transcription of the release's code on small hand-made inputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from p2m_core.config import load_config
from p2m_core.data.dataset import IMAGENET_MEAN, IMAGENET_STD, PointPanopticDataset, collate_points
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.engine.step import training_outputs
from p2m_core.losses import lab_affinity as lab_module
from p2m_core.losses import tree_energy as tree_module
from p2m_core.losses.partial_ce import IGNORE_INDEX, rasterise_points
from p2m_core.losses.presence import sigmoid_focal_loss
from p2m_core.losses.segments import merge_stuff_segments
from p2m_core.model.point2mask import ClassInfo, build_model

REPO = Path(__file__).resolve().parents[1]
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
POINT_KEYS = ("points_yx", "point_labels", "point_is_thing", "point_segment_ids")


def crop(item: dict, h: int, w: int) -> dict:
    """A dataset item cropped to its top-left ``h x w`` (points outside dropped)."""
    out = dict(item)
    out["image"] = item["image"][:, :h, :w]
    if "edges" in item:
        out["edges"] = item["edges"][:h, :w]
    keep = (item["points_yx"][:, 0] < h) & (item["points_yx"][:, 1] < w)
    for key in POINT_KEYS:
        out[key] = item[key][keep]
    return out


def drop_points(item: dict, keep_thing: bool) -> dict:
    """The item with only its thing (``keep_thing``) or only its stuff points."""
    out = dict(item)
    keep = item["point_is_thing"] == keep_thing
    for key in POINT_KEYS:
        out[key] = item[key][keep]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=2, num_val=0, size=64, seed=5, progress=False)
    cfg = load_config(REPO / "experiments" / "presets" / "synthetic_tiny.yaml", [f"data.root={root}", "data.train.points="])
    dataset = PointPanopticDataset.from_config(cfg, "train")
    first, second = dataset[0], dataset[1]
    items = [first, crop(second, second["image"].shape[1] - 32, second["image"].shape[2] - 48)]
    torch.manual_seed(0)
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    batch = collate_points(items)
    assert batch["padding_mask"][1].any() and not batch["padding_mask"][0].any()
    return cfg, model, items, batch


@pytest.fixture(scope="module")
def outputs(setup):
    cfg, model, _, batch = setup
    return training_outputs(model, batch, cfg, 0)


def release_image(batch: dict) -> torch.Tensor:
    """The release's network input: normalised with ImageNet's statistics, then zero-padded."""
    seen = (batch["images"] - MEAN) / STD
    return torch.where(batch["padding_mask"][:, None], torch.zeros(()), seen)


def point_labels_at_stride8(cfg, batch: dict, size8: tuple[int, int]) -> torch.Tensor:
    """Labels of the partial cross-entropy on the stride-8 grid, padding unlabelled."""
    images, padding = batch["images"], batch["padding_mask"]
    labels = rasterise_points(batch["points_yx"], batch["point_labels"], tuple(images.shape[-2:]), size8,
                              size=cfg.pseudo.point_dilation)  # fmt: skip
    valid = ~F.interpolate(padding[:, None].float(), size=size8, mode="nearest")[:, 0].bool()
    return labels.masked_fill(~valid, IGNORE_INDEX)


# ---------------------------------------------------------------- tree energy


def test_tree_energy_is_computed_on_the_normalised_image(setup, outputs):
    """Release: ``|p - AS|`` summed over the canvas, divided by its unlabelled pixels (padding
    included), the tree and its edge strengths from the normalised, zero-padded image resized to
    stride 8."""
    cfg, _, _, batch = setup
    net = outputs.network
    small = F.interpolate(release_image(batch), size=net.size8, mode="bilinear", align_corners=False)
    tree = tree_module.grid_mst(small)
    unlabelled = int((point_labels_at_stride8(cfg, batch, net.size8) == IGNORE_INDEX).sum())
    expected = 0.0
    for logits in net.semantic.logits:
        probs = logits.detach().double().softmax(1)
        filtered = tree_module.tree_filter(probs, small.double(), tree, cfg.loss.tree_sigma)
        expected += cfg.loss.alpha2 * float((probs - filtered).abs().sum()) / unlabelled
    assert outputs.losses["tree_energy"].item() == pytest.approx(expected, rel=1e-4)


def test_tree_edge_strength_across_a_colour_step_follows_the_release(setup, monkeypatch):
    """A step of 30/255 in every channel between two flat halves: the filter's strength across
    it is ``exp(-sum_k (30/255 / std_k)^2 / sigma)`` (about e^-41), not the [0, 1] image's e^-2."""
    cfg, model, items, _ = setup
    item = dict(items[0])
    H, W = item["image"].shape[1:]
    image = torch.full((3, H, W), 0.4)
    image[:, :, W // 2 :] += 30 / 255
    item["image"] = image
    batch = collate_points([item])
    seen = []
    real_filter = tree_module.tree_filter

    def spy(x, guide, tree=None, sigma=tree_module.SIGMA):
        seen.append(guide.detach().clone())
        return real_filter(x, guide, tree, sigma)

    monkeypatch.setattr(tree_module, "tree_filter", spy)
    with torch.no_grad():
        training_outputs(model, batch, cfg, 0)
    assert seen, "the tree energy term never ran"
    guide = seen[0][0].double()  # [3, h8, w8]
    x = guide.shape[-1] // 2  # the step falls between stride-8 columns x - 1 and x
    across = ((guide[:, :, x] - guide[:, :, x - 1]) ** 2).sum(0) / cfg.loss.tree_sigma  # -log s_e per row
    expected = sum((30 / 255 / s) ** 2 for s in IMAGENET_STD) / cfg.loss.tree_sigma
    torch.testing.assert_close(across, torch.full_like(across, expected), rtol=1e-5, atol=0)
    assert expected > 40
    within = ((guide[:, :, 1:x] - guide[:, :, : x - 1]) ** 2).sum(0)
    assert float(within.abs().max()) < 1e-10  # flat halves: strength 1 along the tree inside each


# ---------------------------------------------------------------- presence


def test_presence_divides_by_the_present_classes(setup, outputs):
    """Release: ``loss_cls(sem_cls, target, avg_factor=target_mask_weight.sum())``, weight 2,
    every semantic layer: the focal sum over all (image, class) slots over the present ones."""
    cfg, model, _, batch = setup
    C = model.classes.num_classes
    target = torch.zeros(len(batch["point_labels"]), C)
    for b, labels in enumerate(batch["point_labels"]):
        target[b, labels] = 1.0
    expected = sum(
        cfg.loss.presence_weight * float(sigmoid_focal_loss(s.detach(), target, reduction="sum")) / float(target.sum())
        for s in outputs.network.semantic.presence
    )
    assert 0 < target.sum() < target.numel()
    assert outputs.losses["presence"].item() == pytest.approx(expected, rel=1e-5)


def stuff_presence_targets(model, batch: dict) -> torch.Tensor:
    stuff = model.classes.stuff_classes
    target = torch.zeros(len(batch["point_labels"]), len(stuff))
    for b, (labels, thing) in enumerate(zip(batch["point_labels"], batch["point_is_thing"])):
        for s, c in enumerate(stuff):
            target[b, s] = float(bool(((labels == c) & ~thing).any()))
    return target


def test_stuff_presence_divides_by_the_present_stuff_classes(setup, outputs):
    """Release: ``loss_cls(st_cls, target, avg_factor=num_total_pos_stuff) * 2`` per stuff layer
    with ``loss_cls``' weight 2: ``loss.stuff_presence_weight = 4`` over the present pairs."""
    cfg, model, _, batch = setup
    assert cfg.loss.stuff_presence_weight == 2 * cfg.loss.focal_weight == 4
    target = stuff_presence_targets(model, batch)
    assert 0 < target.sum() < target.numel()
    expected = sum(
        cfg.loss.stuff_presence_weight * float(sigmoid_focal_loss(s.detach(), target, reduction="sum")) / float(target.sum())
        for s in outputs.network.stuff.presence
    )
    assert outputs.losses["stuff_presence"].item() == pytest.approx(expected, rel=1e-5)


def test_stuff_terms_vanish_without_stuff_points(setup):
    """Release: with ``num_total_pos_stuff == 0`` both stuff terms are 0 (no push-down of the
    absent classes' presence)."""
    cfg, model, items, _ = setup
    batch = collate_points([drop_points(item, keep_thing=True) for item in items])
    with torch.no_grad():
        losses = training_outputs(model, batch, cfg, 0).losses
    assert float(losses["stuff_presence"]) == 0.0 and float(losses["stuff_dice"]) == 0.0
    assert float(losses["presence"]) > 0


# ---------------------------------------------------------------- LAB affinity


def release_lab(normalised: torch.Tensor) -> torch.Tensor:
    """The release's Lab of a normalised image: un-normalise, clip, sRGB -> XYZ -> Lab (its
    white point and constants)."""
    rgb = (normalised * STD.double() + MEAN.double()).clip(0, 1)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
                     dtype=torch.float64)  # fmt: skip
    xyz = torch.einsum("mc,bchw->bmhw", m, lin) / torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def release_color_prior(logits: torch.Tensor, normalised: torch.Tensor, pooled: bool = False) -> float:
    """The release's LAB term, written out: zero-padded dilated unfolds (centre left out), pairs
    with colour similarity >= 0.3, ``-logsumexp_c(log P_p + log P_q)`` averaged per image, then
    over images; kernels 3 and 5, dilation 2, weights 0.35 and 0.65. ``pooled``: one mean over
    the pairs of the whole batch instead (what this platform used to compute)."""
    log_prob = logits.log_softmax(1)
    lab = release_lab(normalised)
    B, C, H, W = logits.shape
    total = torch.zeros(B, dtype=torch.float64)
    for k, weight in ((3, 0.35), (5, 0.65)):
        pad = (k + (k - 1)) // 2

        def unfold(x: torch.Tensor) -> torch.Tensor:
            u = F.unfold(x, kernel_size=k, dilation=2, padding=pad).view(B, x.shape[1], k * k, H, W)
            return torch.cat([u[:, :, : k * k // 2], u[:, :, k * k // 2 + 1 :]], 2)

        same = torch.logsumexp(log_prob[:, :, None] + unfold(log_prob), dim=1)
        sim = torch.exp(-0.5 * torch.linalg.vector_norm(lab[:, :, None] - unfold(lab), dim=1))
        counted = (sim >= 0.3).double()
        if pooled:
            total += weight * -(same * counted).sum() / counted.sum().clip(min=1) / B  # mean() below undoes / B
        else:
            total += weight * -(same * counted).sum((1, 2, 3)) / counted.sum((1, 2, 3)).clip(min=1)
    return float(total.sum() if pooled else total.mean())


def test_lab_affinity_is_a_mean_per_image_then_over_images():
    """Two images with very different numbers of counted pairs (one flat, one of random
    colours): the release's per-image mean, not the batch's pair mean. Colours stay away from
    black so that the release's zero padding counts no pair with the outside."""
    torch.manual_seed(3)
    rgb = torch.rand(2, 3, 9, 11, dtype=torch.float64) * 0.7 + 0.3
    rgb[0] = torch.tensor([0.5, 0.6, 0.4], dtype=torch.float64).view(3, 1, 1)
    blocks = torch.rand(1, 3, 3, 4, dtype=torch.float64) * 0.7 + 0.3
    rgb[1] = F.interpolate(blocks, size=(9, 11), mode="nearest")[0]
    logits = torch.randn(2, 4, 9, 11, dtype=torch.float64) * 3
    expected = release_color_prior(logits, (rgb - MEAN.double()) / STD.double())
    from_probs = lab_module.lab_affinity_loss(logits.softmax(1), rgb)  # no pair below the clamp here
    from_logs = lab_module.lab_affinity_loss(logits.softmax(1), rgb, log_probs=logits.log_softmax(1))
    assert from_probs.item() == pytest.approx(expected, rel=1e-6)
    assert from_logs.item() == pytest.approx(expected, rel=1e-6)
    # the pair mean over the whole batch weighs the flat image by its many pairs: far off
    assert release_color_prior(logits, (rgb - MEAN.double()) / STD.double(), pooled=True) != pytest.approx(expected, rel=1e-2)


def test_lab_affinity_log_form_keeps_a_gradient_for_confidently_wrong_pairs():
    """``-log sum_c P_p P_q`` from log-probabilities, as the release: no clamp at 1e-6."""
    logits = torch.zeros(1, 2, 1, 3, dtype=torch.float64)
    logits[0, 0, 0, 0], logits[0, 1, 0, 2] = 20.0, 20.0  # pixels 0 and 2 sure of different classes
    logits.requires_grad_(True)
    image = torch.full((1, 3, 1, 3), 0.5, dtype=torch.float64)
    loss = lab_module.lab_affinity_loss(logits.softmax(1), image, kernels=((3, 2, 1.0),), log_probs=logits.log_softmax(1))
    # log a = logsumexp(log P_0 + log P_2) = -20 + log 2 (up to e^-20): beyond the old clamp's 13.8
    assert loss.item() == pytest.approx(20 - math.log(2), abs=1e-6)
    loss.backward()
    assert float(logits.grad.abs().sum()) > 0.5


def test_criterion_lab_term_reads_the_release_colours_on_padding(setup, monkeypatch):
    """The release un-normalises its zero-padded input: the LAB term's image is the RGB image
    inside and ImageNet's mean colour on the padding (it used to be black there)."""
    cfg, model, _, batch = setup
    seen = []
    real = lab_module.lab_affinity_loss

    def spy(probs, image, *args, **kwargs):
        seen.append(image.detach().clone())
        return real(probs, image, *args, **kwargs)

    import p2m_core.model.criterion as criterion

    monkeypatch.setattr(criterion, "lab_affinity_loss", spy)
    with torch.no_grad():
        training_outputs(model, batch, cfg, 0)
    assert seen
    padding = batch["padding_mask"][:, None].expand_as(batch["images"])
    torch.testing.assert_close(seen[0][~padding], batch["images"][~padding])
    torch.testing.assert_close(seen[0], torch.where(padding, MEAN.expand_as(seen[0]), batch["images"]))


# ---------------------------------------------------------------- projector


def release_projector(embedding: torch.Tensor, segments8: torch.Tensor, batch: dict, num_stuff: int,
                      stuff_classes: list[int], temperature: float) -> float:  # fmt: skip
    """The release's ``loss_metric`` written out: references are the plain masked means over every
    thing point's mask and every stuff class's mask (zero when empty), each point classified
    among its image's references, per-image mean over points, then mean over images."""
    unit = F.normalize(embedding.double(), dim=1)
    h8, w8 = unit.shape[-2:]
    losses = []
    for b in range(unit.shape[0]):
        labels, thing, yx = batch["point_labels"][b], batch["point_is_thing"][b], batch["points_yx"][b]
        masks = [segments8[b] == i for i in range(len(labels)) if thing[i]]
        owner_ref = {}
        for i in range(len(labels)):
            if thing[i]:
                owner_ref[i] = sum(bool(thing[j]) for j in range(i))
        for s, c in enumerate(stuff_classes):
            members = [i for i in range(len(labels)) if not thing[i] and labels[i] == c]
            masks.append(torch.zeros(h8, w8, dtype=torch.bool) if not members else (segments8[b][..., None] == torch.tensor(members)).any(-1))
            for i in members:
                owner_ref[i] = len(masks) - 1
        assert len(masks) == int(thing.sum()) + num_stuff
        m = torch.stack(masks).double()
        refs = torch.einsum("dhw,nhw->nd", unit[b], m) / m.sum((1, 2)).clip(min=1)[:, None]
        terms = []
        for i in range(len(labels)):
            q = unit[b][:, min(int(yx[i, 0]) // 8, h8 - 1), min(int(yx[i, 1]) // 8, w8 - 1)]
            dot = refs @ q / temperature
            if len(refs) > 1:
                terms.append(float(torch.logsumexp(dot, 0) - dot[owner_ref[i]]))
        losses.append(sum(terms) / max(len(terms), 1))
    return sum(losses) / len(losses)


def test_projector_follows_the_release(setup, outputs):
    cfg, model, _, batch = setup
    net = outputs.network
    M = max(len(labels) for labels in batch["point_labels"])
    labels = torch.zeros(2, M, dtype=torch.long)
    is_thing = torch.zeros(2, M, dtype=torch.bool)
    mask = torch.zeros(2, M, dtype=torch.bool)
    for b, (lab, thing) in enumerate(zip(batch["point_labels"], batch["point_is_thing"])):
        labels[b, : len(lab)], is_thing[b, : len(lab)], mask[b, : len(lab)] = lab, thing, True
    segments, _ = merge_stuff_segments(outputs.pseudo.panoptic, labels, is_thing & mask, mask)
    stride = cfg.pseudo.mask_stride
    h8, w8 = net.size8
    ys = ((torch.arange(h8) * 8 + 4) // stride).clamp(max=segments.shape[1] - 1)  # stride-8 cell centres
    xs = ((torch.arange(w8) * 8 + 4) // stride).clamp(max=segments.shape[2] - 1)
    seg8 = segments[:, ys][:, :, xs]
    expected = release_projector(net.embedding.detach(), seg8, batch, len(model.classes.stuff_classes),
                                 list(model.classes.stuff_classes), cfg.loss.projector_temperature)  # fmt: skip
    assert outputs.losses["projector"].item() == pytest.approx(cfg.loss.projector_weight * expected, rel=1e-4)


# ---------------------------------------------------------------- partial cross-entropy


def release_partial_ce(logits: torch.Tensor, batch: dict, size: int) -> float:
    """The release's ``partial_cross_entropy_loss``: per-class point masks max-pooled to squares
    of ``size`` input pixels, nearest-resized to the map, an argmax over classes (the lowest
    class wins an overlap), the cross-entropy summed over the labelled cells over their number.
    Padding cells are left unlabelled here (this platform's choice; the release has no mask)."""
    B, C, h, w = logits.shape
    H, W = batch["images"].shape[-2:]
    target = torch.zeros(B, C, H, W)
    for b, (yx, labels) in enumerate(zip(batch["points_yx"], batch["point_labels"])):
        target[b, labels, yx[:, 0], yx[:, 1]] = 1.0
    target = F.interpolate(F.max_pool2d(target, size, 1, size // 2), size=(h, w), mode="nearest")
    valid, cls = target.max(1)
    inside = ~F.interpolate(batch["padding_mask"][:, None].float(), size=(h, w), mode="nearest")[:, 0].bool()
    labelled = (valid > 0.5) & inside
    cls[~labelled] = C
    return float(F.cross_entropy(logits.double(), cls, ignore_index=C, reduction="sum") / labelled.sum())


def test_partial_ce_follows_the_release_where_squares_of_two_classes_overlap(setup):
    """A point of a higher class listed before an overlapping one of a lower class: the release's
    argmax gives the overlap to the lower class (it used to go to the first point)."""
    cfg, model, items, _ = setup
    item = dict(items[0])
    y, x = (int(v) for v in item["points_yx"][0])
    low = int(item["point_labels"][0])
    high = model.classes.num_classes - 1 if low != model.classes.num_classes - 1 else 0
    low, high = min(low, high), max(low, high)
    item["points_yx"] = torch.cat([torch.tensor([[y + 3, x + 3]]).clamp(max=item["image"].shape[-1] - 1), item["points_yx"]])
    item["point_labels"] = torch.cat([torch.tensor([high]), item["point_labels"]])
    item["point_labels"][1] = low
    item["point_is_thing"] = torch.cat([torch.tensor([model.classes.is_thing[high]]), item["point_is_thing"]])
    item["point_is_thing"][1] = model.classes.is_thing[low]
    item["point_segment_ids"] = torch.cat([torch.tensor([10_000]), item["point_segment_ids"]])
    batch = collate_points([item, items[1]])
    with torch.no_grad():
        outputs = training_outputs(model, batch, cfg, 0)
    expected = sum(release_partial_ce(logits, batch, cfg.pseudo.point_dilation) for logits in outputs.network.semantic.logits)
    assert outputs.losses["partial_ce"].item() == pytest.approx(expected, rel=1e-5)
    first_wins = rasterise_points(batch["points_yx"], batch["point_labels"], tuple(batch["images"].shape[-2:]),
                                  outputs.network.size8, size=cfg.pseudo.point_dilation)  # fmt: skip
    class_wins = rasterise_points(batch["points_yx"], batch["point_labels"], tuple(batch["images"].shape[-2:]),
                                  outputs.network.size8, size=cfg.pseudo.point_dilation, order="class")  # fmt: skip
    assert bool((first_wins == high).any()) and not torch.equal(first_wins, class_wins)
