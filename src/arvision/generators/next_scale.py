"""Next-scale generation (VAR; Tian et al. 2024, arXiv:2404.02905, §3).

Step k predicts all pn_k x pn_k tokens of scale k at once. Its inputs are the multi-scale
tokenizer's *accumulated* latent after scales < k, area-downsampled to pn_k (the tokenizer's
``teacher_forcing_input`` / ``next_scale_input``), embedded by a linear ``word_embed``; the first
scale's input is the class embedding plus ``pos_start``. Attention is block-causal by scale, and
the class conditions every block through AdaLN (or a prefix, if configured so).

Legend: B batch, L tokens over all scales, S scales, C width, Cv code dimension, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arvision.generators.base import Generator, GeneratorConfig, SamplingConfig
from arvision.modeling import register_model
from arvision.nn.linear import Linear
from arvision.nn.transformer import group_causal_mask


@dataclass(frozen=True, kw_only=True)
class NextScaleConfig(GeneratorConfig):
    """Args: patch_nums: the tokenizer's scales; code_dim: its code dimension Cv;
    scale_loss_weights: optional per-scale loss weights (default: every token weighs the same)."""

    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    code_dim: int = 32
    scale_loss_weights: tuple[float, ...] | None = None
    head_bias: bool = True
    init_std: float = -1.0
    sampling: SamplingConfig = SamplingConfig(cfg=1.5, cfg_schedule="linear")

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.scale_loss_weights
        if w is not None and (len(w) != len(self.patch_nums) or any(x < 0 for x in w) or sum(w) <= 0):
            raise ValueError(f"scale_loss_weights needs {len(self.patch_nums)} non-negative weights, got {w}")


@register_model
class NextScaleGenerator(Generator):
    """Class-conditional next-scale generator over a multi-scale residual VQ tokenizer."""

    model_type = "next_scale_generator"
    config_class = NextScaleConfig
    config: NextScaleConfig
    order = "next-scale"
    tokenizer_kind = "multiscale"

    def __init__(self, config: NextScaleConfig) -> None:
        super().__init__(config)
        C, pn = config.transformer.width, config.patch_nums
        self.first_len = pn[0] ** 2
        self.word_embed = Linear(config.code_dim, C)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_len, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.num_tokens, C))
        self.lvl_embed = nn.Embedding(len(pn), C)
        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(pn)])
        self.register_buffer("lvl_1L", lvl.view(1, -1), persistent=False)
        self.register_buffer("attn_mask", group_causal_mask(lvl, lvl), persistent=False)
        weights = torch.tensor([w for w, p in zip(config.scale_loss_weights, pn) for _ in range(p * p)]) if config.scale_loss_weights else None
        self.register_buffer("loss_weights_L", weights, persistent=False)
        self.init_weights()
        std = (1 / C / 3) ** 0.5
        nn.init.trunc_normal_(self.pos_start, std=std)
        nn.init.trunc_normal_(self.pos_1LC, std=std)

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.config.patch_nums)

    @property
    def num_steps(self) -> int:
        return len(self.config.patch_nums)

    @property
    def scale_ranges(self) -> list[tuple[int, int]]:
        out, start = [], 0
        for p in self.config.patch_nums:
            out.append((start, start + p * p))
            start += p * p
        return out

    def _lvl_pos(self, start: int, end: int) -> Tensor:
        return self.lvl_embed(self.lvl_1L[:, start:end]) + self.pos_1LC[:, start:end]

    def _cond(self, labels_B: Tensor) -> Tensor:
        return self.class_emb(labels_B)

    def forward(self, labels_B: Tensor, x_BLCv: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, V) from the tokenizer's ``teacher_forcing_input`` (B, L - first_len, Cv)."""
        B = labels_B.shape[0]
        cond = self._cond(labels_B)
        sos = cond.unsqueeze(1).expand(B, self.first_len, -1) + self.pos_start
        x = torch.cat([sos, self.word_embed(x_BLCv.float())], 1) + self._lvl_pos(0, self.num_tokens)
        return self.head(self.transformer(x, cond_BD=cond, attn_mask=self.attn_mask))

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        with torch.no_grad():
            x_in = tokenizer.teacher_forcing_input(tokens_BL)
        return {"labels_B": labels_B, "x_BLCv": x_in}, {}

    def training_loss(self, logits_BLV: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        return self.loss(logits_BLV, tokens_BL, self.loss_weights_L)

    def step(self, si: int, cond_BD: Tensor, x_BlCv: Tensor | None, cache) -> Tensor:
        """Logits (B, pn_si^2, V) of scale ``si``; ``x_BlCv`` is its input from ``next_scale_input`` (None for si=0).

        Every earlier scale is in the cache and fully visible, so no mask is needed.
        """
        start, end = self.scale_ranges[si]
        if si == 0:
            x = cond_BD.unsqueeze(1).expand(-1, self.first_len, -1) + self.pos_start
        else:
            x = self.word_embed(x_BlCv)
        x = x + self._lvl_pos(start, end)
        return self.head(self.transformer(x, cond_BD=cond_BD, cache=cache))
