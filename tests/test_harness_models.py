"""The tiny real-architecture models sample through ComfyUI's own nodes and executor."""
import pytest
import torch

from harness import run_prompt
from harness.tiny_models import CONTEXT_DIM, SDXL_POOLED_DIM


def sampling_prompt(arch: str, with_control: bool, seed: int = 7) -> dict:
    prompt = {
        "ckpt": {"class_type": "TinyCheckpointLoader", "inputs": {"architecture": arch}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a red apple on a table"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": seed, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
    }
    if with_control:
        prompt["cn"] = {"class_type": "TinyControlNetLoader", "inputs": {"architecture": arch}}
        prompt["hint"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFFFFFF}}
        prompt["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["hint", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        prompt["sample"]["inputs"]["positive"] = ["apply", 0]
        prompt["sample"]["inputs"]["negative"] = ["apply", 1]
    return prompt


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_text_conditioning_has_the_architectures_dimensions(arch):
    result = run_prompt(sampling_prompt(arch, with_control=False), outputs=["pos"])
    cond, extras = result.output("pos")[0]
    assert cond.shape == (1, 77, CONTEXT_DIM[arch])
    if arch == "sdxl":
        assert extras["pooled_output"].shape == (1, SDXL_POOLED_DIM)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_sampling_is_deterministic_and_control_changes_it(arch):
    plain = run_prompt(sampling_prompt(arch, with_control=False), outputs=["sample", "decode"])
    again = run_prompt(sampling_prompt(arch, with_control=False), outputs=["sample"])
    controlled = run_prompt(sampling_prompt(arch, with_control=True), outputs=["sample"])
    latent = plain.output("sample")["samples"]
    assert latent.shape == (1, 4, 8, 8)
    assert torch.isfinite(latent).all()
    assert torch.equal(latent, again.output("sample")["samples"])
    assert (controlled.output("sample")["samples"] - latent).abs().max() > 1e-3
    image = plain.output("decode")
    assert image.shape == (1, 64, 64, 3)
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_another_seed_gives_another_sample():
    a = run_prompt(sampling_prompt("sd15", with_control=False, seed=1), outputs=["sample"]).output("sample")["samples"]
    b = run_prompt(sampling_prompt("sd15", with_control=False, seed=2), outputs=["sample"]).output("sample")["samples"]
    assert (a - b).abs().max() > 1e-3
