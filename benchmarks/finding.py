"""Benchmark: the guided finder against SAM's automatic mask generator, end to end, on one photo.

Both runs use the same random SAM vit_b (real architecture, its mask decoder calibrated as in the
tests so masks pass SAM's quality filters), the same random CLIP at the real ViT-B/32 size, the
same image (scikit-image's coffee, 400x600) and the same CLIP scoring of the masks:
- guided: one image embedding, prompts from CLIP's patch similarity (FinderSettings defaults);
- automatic: SamAutomaticMaskGenerator at its defaults (32x32 = 1,024 point prompts).
The embedding cache is cleared before each run, so both pay for the image encoder.
Random weights make SAM's own quality predictions (predicted IoU, stability) meaningless, and at
SAM's defaults (0.88 / 0.95) they drop every mask, which would leave CLIP scoring out of the
comparison. Both modes therefore run with the same open filters (``--pred-iou-thresh 0
--stability-thresh 0`` by default), so every decoded mask is deduplicated and scored, as many
masks would be with real weights; this is the harder case for the automatic generator's count.

Run from the repo root: ``.venv/bin/python benchmarks/finding.py``. Last line: JSON with the
speed ratio (automatic time / guided time) and the number of masks each scored.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from harness import boot, pack_import  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0)
    parser.add_argument("--stability-thresh", type=float, default=0.0)
    args = parser.parse_args()
    boot()
    import comfy.model_management
    import comfy.sd1_clip
    from skimage import data
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from test_finding_nodes import random_sam

    ops = pack_import("nodes.ops.finding")
    sam_models = pack_import("nodes.models.sam")
    clip_models = pack_import("nodes.models.clip_matcher")
    device = comfy.model_management.get_torch_device()

    model = sam_models.SAMModel(random_sam("vit_b").to(device), "vit_b")
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))
    matcher = clip_models.CLIPMatcher(CLIPModel(CLIPConfig()).eval().to(device), tokenizer)  # ViT-B/32 sizes
    image = torch.from_numpy(data.coffee()).float().div(255).to(device)
    names, negatives = ["coffee cup", "saucer"], ["table", "background"]
    texts = matcher.encode_text(ops.prompt_texts(names + negatives, "a photo of a {}"))

    runs = {}
    for mode in ("guided", "automatic"):
        model.embeddings.clear()
        segmenter = sam_models.SAMSegmenter(model, 32, args.pred_iou_thresh, args.stability_thresh)  # 32x32 grid
        settings = ops.FinderSettings(pred_iou_thresh=args.pred_iou_thresh, stability_thresh=args.stability_thresh)
        start = time.perf_counter()
        with torch.no_grad():
            result = ops.find_in_image(image, segmenter, matcher, texts, names, 0.5, settings, mode)
        seconds = time.perf_counter() - start
        runs[mode] = (seconds, result)
        print(f"{mode:>9}: {seconds:7.1f} s  prompts {result.prompts or 1024:5d}  decoded {result.decoded:5d}  "
              f"masks scored {len(result.labels):4d}  found {result.found}", flush=True)
    guided, amg = runs["guided"], runs["automatic"]
    print(json.dumps({"ratio": round(amg[0] / guided[0], 2), "seconds_guided": round(guided[0], 2),
                      "seconds_amg": round(amg[0], 2), "masks_guided": len(guided[1].labels),
                      "masks_amg": len(amg[1].labels), "prompts_guided": guided[1].prompts, "prompts_amg": 1024,
                      "thresholds": [args.pred_iou_thresh, args.stability_thresh]}))


if __name__ == "__main__":
    main()
