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

The two modes run in interleaved rounds (benchmarks/_common.py; no warm-up round: each run takes
tens of seconds to minutes, so first-call costs do not count); the ratio is the median over the
rounds of the ratio within a round, printed with its min and max. The clock is process CPU time
with ``--threads 1``, wall time otherwise (default: torch's thread count).

Run from the repo root: ``.venv/bin/python benchmarks/finding.py [--rounds 2]``. Last line: JSON with the
speed ratio (automatic time / guided time) and the number of masks each scored.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_rounds_argument, clock, clock_name, interleaved_rounds  # noqa: E402
from harness import boot, pack_import  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0)
    parser.add_argument("--stability-thresh", type=float, default=0.0)
    add_rounds_argument(parser, 2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads; with 1 the clock is process CPU time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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

    results = {}

    def run(mode: str):
        def timed() -> float:
            model.embeddings.clear()
            segmenter = sam_models.SAMSegmenter(model, 32, args.pred_iou_thresh, args.stability_thresh)  # 32x32 grid
            settings = ops.FinderSettings(pred_iou_thresh=args.pred_iou_thresh, stability_thresh=args.stability_thresh)
            tick = clock()
            start = tick()
            with torch.no_grad():
                result = ops.find_in_image(image, segmenter, matcher, texts, names, 0.5, settings, mode)
            seconds = tick() - start
            results[mode] = result
            print(f"{mode:>9}: {seconds:7.1f} s  prompts {result.prompts or 1024:5d}  decoded {result.decoded:5d}  "
                  f"masks scored {len(result.labels):4d}  found {result.found}", flush=True)
            return seconds
        return timed

    rounds = interleaved_rounds({"guided": run("guided"), "automatic": run("automatic")}, args.rounds, warmup=0)
    ratio = rounds.ratio("automatic", "guided")
    print(f"automatic / guided: {ratio.text(2)} over {args.rounds} interleaved rounds, {clock_name()}")
    guided, amg = results["guided"], results["automatic"]
    print(json.dumps({"ratio": round(ratio.median, 2), "ratio_spread": {"ratio": ratio.as_list(2)},
                      "seconds_guided": round(rounds.median("guided"), 2),
                      "seconds_amg": round(rounds.median("automatic"), 2),
                      "masks_guided": len(guided.labels), "masks_amg": len(amg.labels),
                      "prompts_guided": guided.prompts,
                      "prompts_amg": 1024, "thresholds": [args.pred_iou_thresh, args.stability_thresh],
                      "rounds": args.rounds, "clock": clock_name()}))


if __name__ == "__main__":
    main()
