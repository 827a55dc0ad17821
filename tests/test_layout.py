"""Token layouts: what tokenizers tell generators, and how a pixel mask maps onto tokens."""

from __future__ import annotations

import pytest
import torch

from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS
from arvision.tokenizers import TokenLayout


def test_tokenizers_describe_their_layout() -> None:
    vq = TOKENIZER_PRESETS["tiny-vq"]
    ms = TOKENIZER_PRESETS["tiny-msvq"]
    a, b = vq.model_class(vq.config).layout, ms.model_class(ms.config).layout
    assert (a.kind, a.grid, a.num_tokens) == ("grid", (8, 8), 64)
    assert (b.kind, b.scales, b.num_tokens, b.code_dim) == ("scales", (1, 2, 4, 8), 85, ms.config.codebook_dim)


def test_generator_configs_are_derived_from_and_checked_against_the_layout() -> None:
    grid = TokenLayout("grid", 100, grid=(7, 7))
    scales = TokenLayout("scales", 100, scales=(1, 2, 3), code_dim=16)
    raster = GENERATOR_PRESETS["tiny-raster"].model_class
    scale = GENERATOR_PRESETS["tiny-scale"].model_class
    cfg = raster.config_for(grid, transformer=GENERATOR_PRESETS["tiny-raster"].transformer, num_classes=10)
    assert (cfg.grid_size, cfg.vocab_size) == (7, 100)
    gen = raster(cfg)
    gen.check_layout(grid)
    with pytest.raises(ValueError, match="grid_size=8 but the generator was built for grid_size=7"):
        gen.check_layout(TokenLayout("grid", 100, grid=(8, 8)))
    with pytest.raises(ValueError, match="vocab_size=50"):
        gen.check_layout(TokenLayout("grid", 50, grid=(7, 7)))
    with pytest.raises(ValueError, match="next-token order needs a VQ grid tokenizer.*token scales 1/2/3"):
        gen.check_layout(scales)
    with pytest.raises(ValueError, match="next-scale order needs a multi-scale tokenizer.*7x7 token grid"):
        scale.layout_fields(grid)
    assert scale.layout_fields(scales) == {"vocab_size": 100, "patch_nums": (1, 2, 3), "code_dim": 16}
    with pytest.raises(ValueError, match="kind"):
        TokenLayout("video", 10)


def test_pixel_masks_map_to_tokens() -> None:
    m = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    m[..., 14:, :] = True  # bottom half
    grid = TokenLayout("grid", 10, grid=(7, 7)).token_mask(m).view(7, 7)
    # a token is regenerated when any pixel of its 4x4 cell is masked: rows 3 (pixels 12-15) to 6
    assert grid[:3].sum() == 0 and grid[3:].all()
    scales = TokenLayout("scales", 10, scales=(1, 2, 7)).token_mask(m)
    one, two, seven = scales[0, :1], scales[0, 1:5].view(2, 2), scales[0, 5:].view(7, 7)
    assert not one.any()  # half masked: coarse cells are regenerated only when more than half is masked
    assert two.tolist() == [[False, False], [True, True]]
    assert torch.equal(seven, grid)  # the finest scale: any masked pixel
    spot = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    spot[..., 0, 0] = True  # one pixel: its finest token is still regenerated
    assert TokenLayout("scales", 10, scales=(1, 2, 7)).token_mask(spot).sum() == 1
    with pytest.raises(ValueError, match="no spatial layout"):
        TokenLayout("sequence", 10, length=16).token_mask(m)
