"""Regional prompts (attention mode) on DiTs: Flux.1, Flux.2, Chroma, Qwen-Image, Z-Image.

Tiny random models of each real architecture (tests/harness/tiny_dit.py); the joint attention is
probed at ComfyUI's own attention call (an attention override on top of the pack's hooks) by what
each query's output depends on, whichever way the attention below it is computed (grouped queries
or one masked call). The bias maths is checked on numbers.
"""
import types

import pytest
import torch

import comfy.sample
from harness import pack_import, run_prompt, tiny_dit

regional = pack_import("nodes.sampling.regions")
dit_hooks = pack_import("nodes.sampling.dit_regions")
compat = pack_import("nodes.sampling.compat")
dit_ops = pack_import("nodes.ops.dit_regions")

MISSING = tiny_dit.unavailable_reason()
needs_dit = pytest.mark.skipif(MISSING is not None, reason=f"tiny DiTs need ComfyUI 0.33: {MISSING}")

SIZE = 64  # pixels; every tiny DiT has a 4x4 token grid at this size
TOKENS = 8
# Joint attentions per model call (Flux family: double + single blocks) and where the text ends.
JOINT_BLOCKS = {"flux": 4, "flux2": 4, "chroma": 4, "qwen_image": 2, "z_image": 2}
TEXT_LEN = {"flux": 16, "flux2": 512, "chroma": 16, "qwen_image": 16, "z_image": 32}  # Flux.2 pads to 512, Z-Image to 32
REGION_TEXT = {arch: (8, 16) for arch in TEXT_LEN} | {"flux2": (512 - 8, 512)}


def left_half(size=SIZE):
    mask = torch.zeros(1, size, size)
    mask[:, :, : size // 2] = 1.0
    return mask


def sample(model, positive, negative, arch, steps=2, cfg=2.0, sampler="euler", batch=1, noise=None, callback=None):
    latent = tiny_dit.empty_latent(arch, SIZE, SIZE, batch)["samples"]
    if noise is None:
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5))
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", positive, negative, latent, seed=5,
                               disable_pbar=True, callback=callback)


def conds(arch, base_tokens=TOKENS):
    return (tiny_dit.conditioning(arch, "a garden", base_tokens, guidance=3.5),
            tiny_dit.conditioning(arch, "blurry", 3, guidance=3.5))


def regions_of(*specs):
    return [regional.Region(conditioning=c, mask=m, weight=w) for c, m, w in specs]


def assert_close_to_scale(actual, expected, relative=1e-5):
    error = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= relative * scale, f"max difference {error:.3g} vs scale {scale:.3g}"


class AttentionProbe:
    """Attention override on top of all others: which key tokens each query really attends to.

    Each joint attention is run again with the values of one set of key tokens moved by 1: a
    query whose output does not change by a single bit gives those keys exactly zero attention.
    ``reach[name]``: ``[rows, S]``, each query's largest output change for that key set.
    """

    def __init__(self, columns: dict[str, slice]):
        self.columns = columns
        self.calls = []

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        out = func(q, k, v, heads, *args, **kwargs)
        if kwargs.get("skip_reshape"):
            reach = {}
            for name, columns in self.columns.items():
                moved = v.clone()
                moved[:, :, columns] += 1.0
                change = (func(q, k, moved, heads, *args, **kwargs) - out).abs()
                reach[name] = change.amax(dim=(1, 3)) if kwargs.get("skip_output_reshape") else change.amax(-1)
            options = kwargs.get("transformer_options") or {}
            self.calls.append((reach, list(options.get("cond_or_uncond") or [0])))
        return out

    def joint(self, tokens: int) -> list[tuple[dict, list]]:
        """The calls over at least ``tokens`` tokens that have cond rows."""
        return [(reach, flags) for reach, flags in self.calls
                if next(iter(reach.values())).shape[-1] >= tokens and 0 in flags]


def probed(model, columns: dict[str, slice]):
    clone = model.clone()
    probe = AttentionProbe(columns)
    compat.add_attention_override(clone, probe)
    return clone, probe


# --------------------------------------------------------------------------- bias maths (both legs)


def test_joint_bias_numbers_for_soft_masks_weights_and_locality():
    """Two regions on a 1x2 grid; text: 2 padding (Flux.2-style, left), base 1, region A 1, region B 2."""
    layout = dit_ops.JointLayout(text_len=6, joined_start=2, base_len=1, region_lens=(1, 2), image_len=2, seq_len=9)
    grid = [torch.tensor([[[1.0, 0.5]]]), torch.tensor([[[0.0, 0.25]]])]
    bias = dit_ops.joint_attention_bias(grid, [2.0, 1.0], layout, items=1, locality=0.5)[0, 0]
    assert bias.shape == (9, 9)
    inf = float("-inf")
    log = lambda x: torch.log(torch.tensor(x)).item()  # noqa: E731
    # image token 0: A covers it fully (w 2): n = 1 + 2 = 3; B not at all
    assert bias[6, :3].tolist() == pytest.approx([log(1 / 3)] * 3)               # padding + base
    assert bias[6, 3].item() == pytest.approx(log(2 / 3))                        # region A
    assert bias[6, 4:6].tolist() == [inf, inf]                                   # region B: exactly zero attention
    # image token 1: A 0.5 * 2 = 1, B 0.25: n = 2.25
    assert bias[7, 2].item() == pytest.approx(log(1 / 2.25))
    assert bias[7, 3].item() == pytest.approx(log(1 / 2.25))
    assert bias[7, 4:6].tolist() == pytest.approx([log(0.25 / 2.25)] * 2)
    # padding token (image token 2 beyond the grid) belongs to no region
    assert bias[8, 3].item() == inf and bias[8, 2].item() == 0.0
    # base text: sees padding, itself and the image, never region text
    assert bias[2, [0, 1, 2, 6, 7, 8]].tolist() == [0.0] * 6 and bias[2, 3:6].tolist() == [inf] * 3
    # region A text: own token, and the image by its (unweighted) mask; B's text only its own two tokens
    assert bias[3, 3].item() == 0.0 and bias[3, [0, 1, 2, 4, 5]].tolist() == [inf] * 5
    assert bias[3, 6:].tolist() == pytest.approx([0.0, log(0.5), inf])
    assert bias[4, 4:6].tolist() == [0.0, 0.0] and bias[4, 6:].tolist() == pytest.approx([inf, log(0.25), inf])
    # locality 0.5 between image tokens 0 (all A) and 1 (A 0.5, B 0.25, background 0.25):
    # same-region share = 1 * 0.5 = 0.5 -> scale 1 - 0.5 * 0.5 = 0.75
    assert bias[6, 7].item() == pytest.approx(log(0.75)) and bias[6, 6].item() == 0.0


@pytest.mark.parametrize("shared_rows", [1, 3, 64])
def test_grouped_attention_equals_the_dense_bias(shared_rows):
    """Soft and hard mask values, weights, left padding, image tokens after the grid, an uncond row: the
    groups give the attention of the dense mask to float rounding, and each query's groups cover it once."""
    from comfy.ldm.modules.attention import attention_pytorch

    layout = dit_ops.JointLayout(text_len=7, joined_start=1, base_len=2, region_lens=(1, 3), image_len=12, seq_len=21)
    a = torch.tensor([[1.0, 1.0, 1.0, 0.5, 0.0, 0.0], [1.0, 1.0, 0.25, 0.0, 0.0, 0.0]]).view(1, 2, 6)
    b = torch.tensor([[0.0, 0.0, 0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]]).view(1, 2, 6)
    groups = dit_ops.joint_attention_groups(torch.stack([a.flatten(), b.flatten()]), [1.5, 1.0], layout, shared_rows)
    assert sorted(torch.cat([g.queries for g in groups]).tolist()) == list(range(21))
    assert any(g.bias is not None and g.bias.shape[0] > 1 for g in groups) == (shared_rows > 1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 21, 4, generator=g) for _ in range(3))
    dense = dit_ops.joint_attention_bias([a, b], [1.5, 1.0], layout, items=1)
    expected = attention_pytorch(q, k, v, 3, mask=torch.cat([dense, torch.zeros_like(dense)]), skip_reshape=True)
    order = dit_ops.key_order(layout)
    windows = pack_import("nodes.ops.region_groups").key_windows(groups, order)
    assert any(w.gather is None for w in windows) and any(w.gather is not None for w in windows)
    actual = dit_hooks.grouped_attention(attention_pytorch, q, k, v, 3, torch.tensor([0]), order, windows,
                                         skip_reshape=True)
    assert (actual - expected).abs().max().item() < 1e-6
    assert (expected[0] - attention_pytorch(q, k, v, 3, skip_reshape=True)[0]).abs().max().item() > 0.1


def test_key_order_is_half_the_regions_the_base_text_the_image_then_the_rest():
    layout = dit_ops.JointLayout(text_len=7, joined_start=1, base_len=2, region_lens=(1, 3), image_len=12, seq_len=21)
    # text: padding 0, base 1-2, region A 3, region B 4-6; image 7-18; two tokens after the grid 19-20
    assert dit_ops.key_order(layout).tolist() == [3, 0, 1, 2, *range(7, 21), 4, 5, 6]


def test_inconsistent_layouts_and_masks_are_clear_errors():
    def layout(text_len=6, joined_start=1, image_len=2, seq_len=8):
        return dit_ops.JointLayout(text_len=text_len, joined_start=joined_start, base_len=2, region_lens=(1, 2),
                                   image_len=image_len, seq_len=seq_len)

    layout(joined_start=0, text_len=5, seq_len=7)  # the prompt filling the text, the image the rest: fine
    for bad in ({"joined_start": -1}, {"text_len": 5}, {"seq_len": 7}):
        with pytest.raises(ValueError, match="inconsistent joint-attention layout"):
            layout(**bad)
    grid = [torch.ones(1, 1, 2), torch.ones(1, 1, 2)]
    with pytest.raises(ValueError, match="1 region masks and 2 region prompts must match"):
        dit_ops.item_memberships(grid[:1], layout(), 1)
    with pytest.raises(ValueError, match="region 2's mask has 3 grid cells but the image has 2 tokens"):
        dit_ops.item_memberships([grid[0], torch.ones(1, 3, 1)], layout(), 1)
    with pytest.raises(ValueError, match="2 region masks and 1 weights must match"):
        dit_ops.joint_attention_bias(grid, [1.0], layout(), 1)


def test_region_prompts_take_the_positions_they_have_alone():
    layout = dit_ops.JointLayout(text_len=6, joined_start=1, base_len=2, region_lens=(1, 2), image_len=2, seq_len=8)
    assert dit_ops.standalone_text_positions(layout).tolist() == [0, 1, 2, 1, 1, 2, 6, 7]


def test_families_without_a_hook_get_a_clear_error():
    fake = types.SimpleNamespace(model=types.SimpleNamespace(model_config=types.SimpleNamespace(
        unet_config={"image_model": "hidream"})))
    with pytest.raises(ValueError, match="hidream DiT, whose joint attention has no patch point"):
        dit_hooks.check_dit_supported(fake)


def test_this_comfyui_says_which_families_it_can_route():
    reasons = {family: compat.dit_hook_missing(family) for family in compat.DIT_FAMILIES}
    if MISSING is None:
        assert reasons == dict.fromkeys(compat.DIT_FAMILIES)
    else:  # ComfyUI 0.3.75: Flux and Qwen-Image blocks have no attn1_patch; the message says to update
        assert "update ComfyUI to 0.33" in reasons["flux"] and "update ComfyUI to 0.33" in reasons["qwen_image"]


# --------------------------------------------------------------------------- tiny DiTs (ComfyUI 0.33)


@needs_dit
@pytest.mark.parametrize("arch", tiny_dit.ARCHITECTURES)
def test_hard_masks_give_exactly_zero_attention_outside_the_region_at_every_block(arch):
    """Image tokens outside the region (grid columns 2-3) give its text exactly 0 attention, in every joint
    attention of every step; inside they attend to it; the region's text never sees the base text."""
    positive, negative = conds(arch)
    regions = regions_of((tiny_dit.conditioning(arch, "a red car"), left_half(), 1.0))
    patched, pos, neg, _ = regional.apply_regions(tiny_dit.model(arch), positive, negative, regions, "attention", 0)
    text = TEXT_LEN[arch]
    start, end = REGION_TEXT[arch]
    patched, probe = probed(patched, {"region": slice(start, end), "base": slice(0, start)})
    sample(patched, pos, neg, arch, steps=2)
    grid = torch.arange(16).view(4, 4)
    outside, inside = (text + grid[:, 2:]).flatten(), (text + grid[:, :2]).flatten()
    joint = probe.joint(text + 16)
    assert len(joint) == 2 * JOINT_BLOCKS[arch]  # 2 steps x every joint block, cond pass
    for reach, flags in joint:
        cond = [i for i, flag in enumerate(flags) if flag == 0]  # Flux.2 pads both prompts to 512: one call
        assert reach["region"][cond][:, outside].max().item() == 0.0
        assert reach["region"][cond][:, inside].min().item() > 0
        assert reach["base"][cond][:, start:end].max().item() == 0.0  # region text -> base text


@needs_dit
@pytest.mark.parametrize("arch", tiny_dit.ARCHITECTURES)
def test_without_regions_the_probe_sees_attention_everywhere(arch):
    """The probe is able to fail: plain joint attention gives the same columns non-zero weight."""
    text = TEXT_LEN[arch]
    start, end = REGION_TEXT[arch]
    model, probe = probed(tiny_dit.model(arch), {"region": slice(start, end)})
    positive = tiny_dit.conditioning(arch, "a garden", 16, guidance=3.5)
    sample(model, positive, conds(arch)[1], arch, steps=1)
    joint = probe.joint(text + 16)
    assert joint and all(reach["region"][:, text:text + 16].min().item() > 0 for reach, _ in joint)


@needs_dit
@pytest.mark.parametrize("arch", ["flux", "flux2", "chroma", "qwen_image"])
def test_one_region_covering_everything_equals_the_plain_prompt(arch):
    """Base prompt repeated as a full-cover region: the same latent to float rounding (relative 1e-5).
    Flux.2 with a 512-token prompt (shorter ones are padded to 512 on the left, by a different amount
    once region tokens are added)."""
    model = tiny_dit.model(arch)
    positive, negative = conds(arch, 512 if arch == "flux2" else TOKENS)
    plain = sample(model, positive, negative, arch)
    regions = regions_of((positive, torch.ones(1, SIZE, SIZE), 1.0))
    patched, pos, neg, _ = regional.apply_regions(model, positive, negative, regions, "attention", 0)
    assert pos[0][0].shape[1] == 2 * positive[0][0].shape[1]
    assert_close_to_scale(sample(patched, pos, neg, arch), plain)


@needs_dit
@pytest.mark.parametrize("arch", tiny_dit.ARCHITECTURES)
def test_latent_batch_of_two_and_cfg_one(arch):
    """Batch 2 with the same noise twice gives the batch-1 result twice; cfg 1 (cond rows only) runs."""
    model = tiny_dit.model(arch)
    positive, negative = conds(arch)
    regions = regions_of((tiny_dit.conditioning(arch, "a red car"), left_half(), 1.5))
    patched, pos, neg, _ = regional.apply_regions(model, positive, negative, regions, "attention", 4)
    single = sample(patched, pos, neg, arch)
    noise = torch.randn(single.shape, generator=torch.Generator().manual_seed(5)).repeat(2, *[1] * (single.ndim - 1))
    double = sample(patched, pos, neg, arch, batch=2, noise=noise)
    assert_close_to_scale(double[1], double[0])
    assert_close_to_scale(double[:1], single, 1e-4)
    cfg_one = sample(patched, pos, neg, arch, cfg=1.0)
    plain_cfg_one = sample(model, positive, negative, arch, cfg=1.0)
    assert torch.isfinite(cfg_one).all()
    assert (cfg_one - plain_cfg_one).abs().max() > 1e-3 * plain_cfg_one.abs().max()


@needs_dit
def test_cond_and_uncond_in_one_call_bias_only_the_cond_rows():
    """A negative as long as the joined prompt is batched with it: its rows attend as without regions."""
    arch = "flux"
    positive = tiny_dit.conditioning(arch, "a garden", TOKENS, guidance=3.5)
    negative = tiny_dit.conditioning(arch, "blurry", 2 * TOKENS, guidance=3.5)
    regions = regions_of((tiny_dit.conditioning(arch, "a red car"), left_half(), 1.0))
    patched, pos, neg, _ = regional.apply_regions(tiny_dit.model(arch), positive, negative, regions, "attention", 0)
    patched, probe = probed(patched, {"region": slice(8, 16)})
    sample(patched, pos, neg, arch, steps=1)
    both = [(reach, flags) for reach, flags in probe.calls if len(flags) == 2]
    assert len(both) == JOINT_BLOCKS[arch]
    outside = (16 + torch.arange(16).view(4, 4)[:, 2:]).flatten()
    for reach, flags in both:
        cond, uncond = flags.index(0), flags.index(1)
        assert reach["region"][cond, outside].max().item() == 0.0
        assert reach["region"][uncond, outside].min().item() > 0.0


def one_left_region(arch: str, locality: int):
    """A tiny ``arch`` model patched in attention mode with one region ("a red car") on the left half."""
    positive, negative = conds(arch)
    regions = regions_of((tiny_dit.conditioning(arch, "a red car"), left_half(), 1.0))
    patched, pos, neg, _ = regional.apply_regions(tiny_dit.model(arch), positive, negative, regions, "attention", locality)
    return patched, pos, neg


@needs_dit
def test_every_core_sampler_runs_with_regions():
    """Every core sampler: the base prompt as a full-cover region gives the plain latent (float rounding);
    a region on the left half changes it (checked once: the routing is the sampler's model call, the same
    for every sampler)."""
    import comfy.samplers

    arch = "flux"
    model = tiny_dit.model(arch)
    positive, negative = conds(arch)
    full, full_pos, full_neg, _ = regional.apply_regions(
        model, positive, negative, regions_of((positive, torch.ones(1, SIZE, SIZE), 1.0)), "attention", 0)
    for sampler in comfy.samplers.KSampler.SAMPLERS:
        plain = sample(model, positive, negative, arch, sampler=sampler)
        assert_close_to_scale(sample(full, full_pos, full_neg, arch, sampler=sampler), plain, 1e-4)
    patched, pos, neg = one_left_region(arch, locality=8)
    out = sample(patched, pos, neg, arch, sampler=sampler)
    assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-3 * plain.abs().max()


@needs_dit
def test_caches_hold_one_run_only(monkeypatch):
    """The groups are worked out once per run (the same every step and block), held during it, emptied after."""
    arch = "qwen_image"
    patched, pos, neg = one_left_region(arch, locality=0)
    hooks = patched.model_options["transformer_options"]["patches"]["attn1_patch"][-1].__self__
    made, held = [], []
    memberships = dit_ops.item_memberships
    monkeypatch.setattr(dit_ops, "item_memberships", lambda *args: made.append(1) or memberships(*args))
    for run in range(2):
        sample(patched, pos, neg, arch, steps=3, callback=lambda *args: held.append(len(hooks.cache)))
        assert hooks.cache == {}
        assert len(made) == run + 1  # one plan per run, not one per step or block
    assert held and min(held) > 0


@needs_dit
def test_apply_regions_node_on_a_dit_through_the_executor():
    prompt = {
        "model": {"class_type": "TinyDiTLoader", "inputs": {"architecture": "z_image"}},
        "pos": {"class_type": "TinyDiTTextEncode", "inputs": {"architecture": "z_image", "text": "a garden", "tokens": 8}},
        "neg": {"class_type": "TinyDiTTextEncode", "inputs": {"architecture": "z_image", "text": "", "tokens": 8}},
        "car": {"class_type": "TinyDiTTextEncode", "inputs": {"architecture": "z_image", "text": "a car", "tokens": 8}},
        "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}},
        "region": {"class_type": "SCRegion", "inputs": {"conditioning": ["car", 0], "mask": ["mask", 0], "weight": 1.0,
                                                         "control_strength": 1.0}},
        "apply": {"class_type": "SCApplyRegions", "inputs": {
            "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "regions": ["region", 0],
            "mode": "attention", "feather": 0, "self_attention_locality": 0.5}},
        "latent": {"class_type": "TinyDiTEmptyLatent", "inputs": {"architecture": "z_image", "width": 64, "height": 64,
                                                                   "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "positive": ["apply", 1], "negative": ["apply", 2], "latent_image": ["latent", 0],
            "seed": 1, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "plain": {"class_type": "KSampler", "inputs": {
            "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 1, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
    }
    result = run_prompt(prompt, outputs=["sample", "plain"])
    ours, plain = result.output("sample")["samples"], result.output("plain")["samples"]
    assert ours.shape == plain.shape == (1, 16, 8, 8) and torch.isfinite(ours).all()
    assert (ours - plain).abs().max() > 1e-3 * plain.abs().max()


DIT_LOADER_STANDINS = {"UNETLoader": "TinyDiTLoader", "CLIPLoader": "TinyDiTCLIPLoader", "VAELoader": "TinyDiTVAELoader"}


@needs_dit
def test_shipped_z_image_regions_workflow_runs_on_the_tiny_z_image():
    """workflows/regions_zimage.json as the frontend queues it; the three loaders hand in the tiny Z-Image
    (tests/harness/tiny_dit.py) under the workflow's file names; sizes / 16, 2 steps."""
    from harness import REPO_ROOT
    from harness.workflow import object_info, ui_to_api

    import json

    path = REPO_ROOT / "workflows" / "regions_zimage.json"
    prompt = ui_to_api(json.loads(path.read_text(encoding="utf-8")), object_info(), source=str(path))
    files = {}
    for entry in prompt.values():
        kind = entry["class_type"]
        if kind in DIT_LOADER_STANDINS:
            files[kind] = next(v for k, v in entry["inputs"].items() if k.endswith("_name"))
            entry["class_type"], entry["inputs"] = DIT_LOADER_STANDINS[kind], {"architecture": "z_image"}
        elif kind in ("SolidMask", "MaskComposite", "EmptySD3LatentImage", "SCApplyRegions"):
            entry["inputs"].update({k: v // 16 for k, v in entry["inputs"].items()
                                    if k in ("width", "height", "x", "y", "feather")})
        elif kind == "KSampler":
            entry["inputs"]["steps"] = 2
    assert files == {"UNETLoader": "z_image_turbo_bf16.safetensors", "CLIPLoader": "qwen_3_4b.safetensors",
                     "VAELoader": "ae.safetensors"}
    [apply] = [k for k, v in prompt.items() if v["class_type"] == "SCApplyRegions"]
    [sampler] = [k for k, v in prompt.items() if v["class_type"] == "KSampler"]
    assert prompt[apply]["inputs"]["mode"] == "attention" and prompt[sampler]["inputs"]["cfg"] == 1.0
    result = run_prompt(prompt)
    # The base prompt and both region prompts (77 tokens each from the tiny CLIP) joined; two masks, left and right.
    positive = result.output(apply, 1)
    assert positive[0][0].shape == (1, 3 * 77, tiny_dit.CONTEXT_DIM)
    preview = result.output(apply, 3)[0]
    assert preview.shape == (512, 512, 3)  # no image connected: drawn on a 512 px grey canvas
    left, right = preview[256, 64], preview[256, 448]
    assert left[0] > left[2] and right[2] > right[0]  # region 1 red on the left, region 2 blue on the right
    [decode] = [k for k, v in prompt.items() if v["class_type"] == "VAEDecode"]
    image = result.output(decode)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
