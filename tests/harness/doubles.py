"""Test doubles shared by the test files: the colour CLIP double and its loader node.

Registered for every test run by ``tiny_models.register_test_nodes`` (conftest).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .fixture_nodes import fixture_node

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "white": (1.0, 1.0, 1.0),
           "black": (0.0, 0.0, 0.0), "background": (1.0, 1.0, 1.0)}


class ColourMatcher(torch.nn.Module):
    """A CLIP double: an embedding is the mean colour minus grey, a text's is the colour its name says.

    So a crop matches "red" exactly as much as its pixels are red, and the grey fill outside a
    mask counts for nothing. Logit scale 100, like CLIP's.
    """

    logit_scale = 100.0

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    @staticmethod
    def _colour(text: str) -> torch.Tensor:
        for word, rgb in COLOURS.items():
            if word in text:
                return torch.tensor(rgb)
        raise ValueError(f"the colour double knows no colour in {text!r}")

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(torch.stack([self._colour(t) for t in texts]) - 0.5, dim=-1).to(self.anchor.device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize((images.float() - 0.5).mean((2, 3)), dim=-1, eps=1e-6)

    def patch_similarity(self, image: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        patches = F.normalize(F.adaptive_avg_pool2d(image.float() - 0.5, 8)[0], dim=0, eps=1e-6)  # [3,8,8]
        return torch.einsum("td,dhw->thw", text_embeds.float(), patches)


def _colour_matcher():
    from .comfy import pack_import

    return pack_import("nodes.models").ModelCache(1).get("colour", ColourMatcher)


TestColourMatcherLoader = fixture_node("TestColourMatcherLoader", "Test-only node: the colour CLIP double, as SC_CLIP_MATCHER.",
                                       ("SC_CLIP_MATCHER",), _colour_matcher)
