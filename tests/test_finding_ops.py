"""Finder ops with doubles whose answers are known: prompts, filtering, dedupe, crops, ranking, merging.

The doubles here (a colour CLIP, a segmenter that returns known objects, calibrated random SAMs)
are shared with test_finding_nodes.py and benchmarks/finding.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness import pack_import
from harness.doubles import ColourMatcher

ops = pack_import("nodes.ops.finding")

class KnownObjectsSegmenter:
    """A SAM double: a point gives [the object under it, that object again, the whole image]; a box, its object."""

    def __init__(self, objects: list[torch.Tensor]) -> None:
        self.objects = objects
        self.images = 0
        self.prompts: list[tuple[int, int]] = []

    def set_image(self, image: np.ndarray) -> None:
        self.images += 1

    def _logits(self, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, 10.0, -10.0)

    def predict(self, points: torch.Tensor, boxes: torch.Tensor):
        everything = torch.ones_like(self.objects[0])
        out = []
        self.prompts.append((len(points), len(boxes)))
        for x, y in points.tolist():
            under = [m for m in self.objects if m[int(y), int(x)]] or [~torch.stack(self.objects).any(0)]
            out += [under[0], under[0].clone(), everything]
        for x0, y0, x1, y1 in boxes.tolist():  # the object the box covers most of
            inside = [m[int(y0):int(y1), int(x0):int(x1)].float().mean() for m in self.objects]
            out.append(self.objects[int(torch.stack(inside).argmax())])
        if not out:
            return torch.zeros(0, *everything.shape), torch.zeros(0)
        return self._logits(torch.stack(out)), torch.full((len(out),), 0.95)

    def automatic(self, image: np.ndarray):
        masks = torch.stack([*self.objects, self.objects[0].clone()])
        return masks, torch.tensor([0.9] * len(self.objects) + [0.8])


def square(height: int, width: int, top: int, left: int, size: int) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top:top + size, left:left + size] = True
    return mask


@pytest.fixture()
def scene():
    """White 96x128 photo, a red square on the left, a blue square touching the right and bottom edges."""
    red, blue = square(96, 128, 20, 10, 30), square(96, 128, 56, 88, 40)
    image = torch.ones(96, 128, 3)
    image[red] = torch.tensor([1.0, 0.0, 0.0])
    image[blue] = torch.tensor([0.0, 0.0, 1.0])
    return image, red, blue


LOOSE = ops.FinderSettings(max_points=8, grid=8, pred_iou_thresh=0.5, stability_thresh=0.5)


def find(image, objects, names, negatives=("white", "black"), threshold=0.5, settings=LOOSE, mode="guided"):
    matcher, segmenter = ColourMatcher(), KnownObjectsSegmenter(objects)
    texts = ops.prompt_texts(list(names) + list(negatives), "a photo of a {}")
    result = ops.find_in_image(image, segmenter, matcher, matcher.encode_text(texts), list(names), threshold,
                               settings, mode)
    return result, segmenter


# --------------------------------------------------------------------------- inputs


def test_names_are_split_on_lines_and_commas_without_duplicates():
    assert ops.names_from_lines(" shoe\nred bag, shoe\n\n ,hat ") == ["shoe", "red bag", "hat"]
    assert ops.prompt_texts(["shoe"], "a photo of a {}") == ["a photo of a shoe"]
    assert ops.prompt_texts(["shoe"], "product:") == ["product: shoe"]


@pytest.mark.parametrize("text", ["", "  \n , \n"])
def test_an_empty_class_list_is_an_error_that_says_what_to_write(text):
    with pytest.raises(ValueError, match="class name list is empty.*one per line"):
        ops.require_class_names(text)


# --------------------------------------------------------------------------- prompts


def test_relevance_is_the_best_name_minus_the_best_negative_scaled_to_0_1():
    sim = torch.zeros(3, 2, 2)
    sim[0] = torch.tensor([[0.3, 0.1], [0.2, 0.0]])  # class name
    sim[1] = torch.tensor([[0.0, 0.1], [0.4, 0.0]])  # negatives
    sim[2] = torch.tensor([[0.1, 0.0], [0.0, 0.2]])
    rel = ops.relevance_map(sim, 1)
    raw = torch.tensor([[0.2, 0.0], [-0.2, -0.2]])
    assert torch.allclose(rel, (raw + 0.2) / 0.4)
    assert torch.equal(ops.relevance_map(torch.zeros(2, 3, 3), 1), torch.full((3, 3), 0.5))


def test_prompts_start_at_the_relevance_peak_and_boxes_cover_the_relevant_region():
    rel = torch.zeros(8, 8)
    rel[2:4, 5:8] = 0.6  # a region touching the right edge
    rel[2, 6] = 1.0
    settings = ops.FinderSettings(max_points=3, grid=8, max_boxes=2, box_level=0.5, min_relevance=0.5)
    points, boxes = ops.select_prompts(rel, 80, 160, settings)
    assert points.shape == (3, 2)
    assert points[0].tolist() == [6.5 * 20, 2.5 * 10]  # cell (row 2, col 6) centre in pixels (x, y)
    assert all(rel[int(y // 10), int(x // 20)] >= 0.5 for x, y in points.tolist())
    assert boxes.tolist() == [[100.0, 20.0, 160.0, 40.0]]  # right edge = image width


def test_no_prompt_comes_from_irrelevant_places():
    settings = ops.FinderSettings(grid=4, min_relevance=0.5, box_level=0.5)
    points, boxes = ops.select_prompts(torch.full((4, 4), 0.2), 64, 64, settings)
    assert points.shape == (0, 2) and boxes.shape == (0, 4)


# --------------------------------------------------------------------------- filtering and dedupe


def test_stability_score_is_the_iou_of_the_mask_at_threshold_plus_and_minus_offset():
    logits = torch.tensor([[[2.0, 0.5, -0.5, -2.0]], [[-2.0, -2.0, -2.0, -2.0]]])
    assert torch.allclose(ops.stability_score(logits), torch.tensor([1 / 3, 0.0]))


def test_mask_iou_and_dedupe_keep_the_best_of_each_group_of_duplicates():
    a = square(10, 10, 0, 0, 4)
    a2 = a.clone()
    a2[0, 4] = True  # IoU 16/17 with a
    b = square(10, 10, 6, 6, 4)  # bottom-right corner, disjoint
    masks = torch.stack([a, a2, b])
    iou = ops.mask_iou(masks)
    assert iou[0, 1].item() == pytest.approx(16 / 17) and iou[0, 2] == 0 and iou[2, 2] == 1
    assert ops.dedupe_by_iou(masks, torch.tensor([0.5, 0.9, 0.1]), 0.85).tolist() == [1, 2]
    assert ops.dedupe_by_iou(masks, torch.tensor([0.5, 0.9, 0.1]), 0.95).tolist() == [1, 0, 2]


def test_filter_drops_low_quality_unstable_and_tiny_masks():
    big = torch.where(square(20, 20, 0, 0, 10), 5.0, -5.0)
    soft = torch.where(square(20, 20, 10, 10, 10), 0.5, -5.0)  # unstable: vanishes at threshold +1
    tiny = torch.where(square(20, 20, 0, 19, 1), 5.0, -5.0)  # 1 px at the right edge
    logits = torch.stack([big, big, soft, tiny])
    settings = ops.FinderSettings(pred_iou_thresh=0.8, stability_thresh=0.9, min_area=0.01)
    assert ops.filter_decoded(logits, torch.tensor([0.5, 0.9, 0.9, 0.9]), settings).tolist() == [1]


# --------------------------------------------------------------------------- crops and ranking


def test_masked_crop_is_square_grey_outside_the_mask_and_reaches_the_image_edges(scene):
    image, red, blue = scene
    crops = ops.masked_crops(image, torch.stack([red, blue]), size=40, padding=0.0, fill=0.5)
    assert crops.shape == (2, 3, 40, 40)
    assert torch.allclose(crops[0, :, 20, 20], torch.tensor([1.0, 0.0, 0.0]))  # red fills its box exactly
    assert torch.allclose(crops[1], torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 40, 40))  # edge square
    wide = ops.masked_crops(image, red[None], size=30, padding=0.5, fill=0.5)[0]
    assert torch.allclose(wide[:, 0, 0], torch.full((3,), 0.5))  # outside the mask: fill, not the white photo
    assert ops.mask_boxes(torch.stack([blue, torch.zeros_like(blue)])) == [(88, 56, 128, 96), (0, 0, 0, 0)]


def test_rank_scores_the_best_name_and_refuses_masks_a_negative_wins():
    sims = torch.tensor([[0.30, 0.10, 0.20], [0.20, 0.21, 0.30], [0.25, 0.26, 0.0]])
    scores, best, matched = ops.rank(sims, 2, 100.0, 0.3)
    probs = torch.softmax(sims * 100, dim=1)
    assert torch.allclose(scores, probs[:, :2].max(1).values)
    assert best.tolist() == [0, 1, 1]
    assert matched.tolist() == [True, False, True]  # row 1: the negative is most likely
    # a class name above the threshold still loses to a more likely negative
    close = torch.tensor([[0.300, 0.0, 0.306]])
    scores, _, matched = ops.rank(close, 2, 100.0, 0.3)
    assert scores.item() > 0.3 and torch.softmax(close * 100, 1)[0, 2] > scores.item()
    assert matched.tolist() == [False]


# --------------------------------------------------------------------------- the finder


def test_finder_picks_the_mask_of_the_named_object(scene):
    image, red, blue = scene
    result, segmenter = find(image, [red, blue], ["red"])
    assert result.found and result.labels[0] == "red"
    assert torch.equal(result.masks[0], red)
    assert torch.equal(ops.merged_mask(result, "best", 96, 128), red.float())
    assert segmenter.images == 1 and len(segmenter.prompts) == 1  # one embedding, one batched decode
    assert result.prompts <= 8 + 4 and result.decoded == 3 * segmenter.prompts[0][0] + segmenter.prompts[0][1]
    # duplicates (each point decodes its object twice) were dropped
    assert ops.mask_iou(result.masks).fill_diagonal_(0).max() <= LOOSE.dedupe_iou


def test_finder_reports_not_found_when_no_mask_matches(scene):
    image, red, blue = scene
    result, _ = find(image, [red, blue], ["green"])
    assert not result.found and not result.matched.any()
    assert ops.merged_mask(result, "all", 96, 128).sum() == 0
    entry = json.loads(ops.report([result]))[0]
    assert entry["found"] is False and all(not m["matched"] for m in entry["masks"])


def test_merge_all_is_the_union_of_every_match_and_best_is_the_top_one(scene):
    image, red, blue = scene
    result, _ = find(image, [red, blue], ["red", "blue"])
    assert torch.equal(ops.merged_mask(result, "all", 96, 128), (red | blue).float())
    assert sorted(label for label, m in zip(result.labels, result.matched) if m) == ["blue", "red"]
    best = ops.merged_mask(result, "best", 96, 128)
    assert torch.equal(best, red.float()) or torch.equal(best, blue.float())
    with pytest.raises(ValueError, match="merge mode"):
        ops.merged_mask(result, "first", 96, 128)


def test_automatic_mode_uses_the_same_scoring_and_dedupe(scene):
    image, red, blue = scene
    result, _ = find(image, [red, blue], ["blue"], mode="automatic")
    assert result.decoded == 3 and len(result.labels) == 2
    assert torch.equal(result.masks[0], blue) and result.matched.tolist() == [True, False]


def test_preview_tints_the_chosen_mask_and_leaves_the_rest(scene):
    image, red, blue = scene
    result, _ = find(image, [red, blue], ["blue"])
    out = ops.found_preview(image, result, "best")
    assert out.shape == image.shape
    inside = out[70:90, 100:120]  # inside blue, away from its edge and the label
    first_colour = torch.tensor(pack_import("nodes.ops.regions").PALETTE[0])  # the pack's one palette
    assert torch.allclose(inside, first_colour * 0.5 + torch.tensor([0.0, 0.0, 1.0]) * 0.5, atol=1 / 255)
    assert torch.allclose(out[30:45, 20:35], image[30:45, 20:35], atol=1 / 255)  # red square untouched
