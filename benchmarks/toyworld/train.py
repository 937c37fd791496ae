"""Train the toy model (model.py) on the world (world.py): UNet and text encoder jointly.

DDPM eps-prediction with ComfyUI's own SD1.5 noise schedule (the model's ``model_sampling``), so
ComfyUI's samplers run the result as any SD1.5 checkpoint. 10 % of captions are dropped to "" (the
empty prompt ComfyUI encodes as the negative) for classifier-free guidance. Batch data and noise at
step n depend only on (seed, n), so a resumed run sees the same batches as an unbroken one.

Resumable: every ``--save-every`` seconds the model, its EMA, the optimiser and the step go to
``--state`` (outside git). ``--export`` writes the EMA weights as safetensors (float16) for the
project. Never run by CI.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/toyworld/train.py --steps 6000
    .venv/bin/python benchmarks/toyworld/train.py --export   # -> benchmarks/toyworld/toy_sd15.safetensors
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toyworld import model as toy  # noqa: E402
from toyworld import world  # noqa: E402

SEED = 20261206
CAPTION_DROP = 0.1
BACKGROUND_PHRASE = 0.5  # share of captions that end "on a grey background"


def initialise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default init everywhere (ComfyUI's layers skip it), embeddings N(0, 0.02)."""
    for sub in module.modules():
        for cls in type(sub).__mro__:
            if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                if isinstance(sub, torch.nn.Embedding):
                    with torch.no_grad():
                        sub.weight.normal_(0, 0.02, generator=generator)
                else:
                    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
                    cls.reset_parameters(sub)
                break
    for name, param in module.named_parameters():
        if "position_embedding" in name:
            with torch.no_grad():
                param.normal_(0, 0.01, generator=generator)


def trainable_clip_layers() -> None:
    """ComfyUI's ``CLIPLayer.forward`` adds its residuals in place (``x += ...``), which autograd
    rejects; train with the same sums out of place (inference keeps ComfyUI's own forward)."""
    import comfy.clip_model

    def forward(self, x, mask=None, optimized_attention=None):
        x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        return x + self.mlp(self.layer_norm2(x))

    comfy.clip_model.CLIPLayer.forward = forward


def batch(step: int, size: int, tokens_of) -> tuple[torch.Tensor, list[list[int]], list[str]]:
    rng = random.Random(SEED * 1_000_003 + step)
    scenes = [world.random_scene(rng) for _ in range(size)]
    captions = ["" if rng.random() < CAPTION_DROP else s.caption(rng.random() < BACKGROUND_PHRASE) for s in scenes]
    latents = torch.stack([world.scene_latent(s, toy.LATENT_CELLS) for s in scenes])
    return latents, [tokens_of(c) for c in captions], captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000, help="train until this step")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--state", type=Path, default=Path("/work/scratch/quality/train_state.pt"))
    parser.add_argument("--log", type=Path, default=Path("/work/scratch/quality/train_log.txt"))
    parser.add_argument("--save-every", type=float, default=180.0, help="seconds between saved states")
    parser.add_argument("--export", action="store_true", help="write the EMA weights to the project and exit")
    parser.add_argument("--export-to", type=Path, default=toy.WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    toy.import_comfy()
    from comfy.cli_args import args as comfy_args

    comfy_args.use_pytorch_cross_attention = True
    trainable_clip_layers()

    generator = torch.Generator().manual_seed(SEED)
    unet, clip = toy.build_unet(), toy.build_clip()
    initialise(unet.diffusion_model, generator)
    initialise(clip.cond_stage_model, generator)
    with torch.no_grad():  # the last conv starts at zero: the first predictions are "no noise"
        unet.diffusion_model.out[-1].weight.zero_()
        unet.diffusion_model.out[-1].bias.zero_()
    encoder = clip.cond_stage_model.clip_l
    modules = torch.nn.ModuleDict({"unet": unet.diffusion_model, "clip": clip.cond_stage_model})
    modules.train().requires_grad_(True)
    ema = copy.deepcopy(modules).requires_grad_(False)
    optimiser = torch.optim.AdamW(modules.parameters(), lr=args.lr, weight_decay=0.0, foreach=True)
    step, seconds, used_ids = 0, 0.0, set()
    if args.state.exists():
        state = torch.load(args.state, weights_only=False)
        modules.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        step, seconds, used_ids = state["step"], state["seconds"], set(state["used_ids"])
        print(f"resumed at step {step} ({seconds / 60:.1f} min trained)", flush=True)
    for group in optimiser.param_groups:
        group["lr"] = args.lr

    token_cache: dict[str, list[int]] = {}

    def tokens_of(text: str) -> list[int]:
        if text not in token_cache:
            token_cache[text] = toy.token_ids(clip, text)
            used_ids.update(token_cache[text])
        return token_cache[text]

    if args.export:
        for name in world.COLOURS:
            for shape in world.SHAPES:
                tokens_of(world.caption([f"a {name} {shape}"] * 2))
        unet.diffusion_model.load_state_dict(ema["unet"].state_dict())
        clip.cond_stage_model.load_state_dict(ema["clip"].state_dict())
        import safetensors.torch

        sd = {k: v.half() if v.is_floating_point() else v for k, v in toy.state_dict(unet, clip, sorted(used_ids)).items()}
        safetensors.torch.save_file(sd, str(args.export_to), metadata={"step": str(step), "seed": str(SEED)})
        digest = toy.sha256(args.export_to)
        args.export_to.with_suffix(".sha256").write_text(f"{digest}  {args.export_to.name}\n")
        print(f"exported EMA weights of step {step} to {args.export_to} (sha256 {digest})")
        return

    alphas_cumprod = 1 / (1 + unet.model_sampling.sigmas.float() ** 2)  # ComfyUI's own SD1.5 schedule
    args.state.parent.mkdir(parents=True, exist_ok=True)
    last_save, window = time.time(), []
    while step < args.steps:
        start = time.time()
        latents, tokens, _ = batch(step, args.batch, tokens_of)
        noise_gen = torch.Generator().manual_seed(SEED * 7 + step)
        t = torch.randint(0, 1000, (args.batch,), generator=noise_gen)
        noise = torch.randn(latents.shape, generator=noise_gen)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        context = encoder(tokens)[0]
        predicted = modules["unet"](noisy, t.float(), context=context)
        loss = torch.nn.functional.mse_loss(predicted, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimiser.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(list(ema.parameters()), list(modules.parameters()), 1 - decay)
        step += 1
        seconds += time.time() - start
        window.append(loss.item())
        if step % 50 == 0 or step in (1, 5, 20):
            line = f"step {step} loss {sum(window) / len(window):.4f} lr {args.lr:g} trained {seconds / 60:.1f} min"
            print(line, flush=True)
            with args.log.open("a") as log:
                log.write(line + "\n")
            window = []
        if time.time() - last_save > args.save_every or step == args.steps:
            tmp = args.state.with_suffix(".tmp")
            torch.save({"model": modules.state_dict(), "ema": ema.state_dict(), "optimiser": optimiser.state_dict(),
                        "step": step, "seconds": seconds, "used_ids": sorted(used_ids)}, tmp)
            tmp.replace(args.state)
            last_save = time.time()


if __name__ == "__main__":
    main()
