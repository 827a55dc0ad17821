"""Losses for tokenizers of real images: a PatchGAN discriminator with the hinge loss, VQGAN's
adaptive weight, and the perceptual (LPIPS) term, combined by :class:`ReconstructionLoss`.

PatchGAN (Isola et al. 2017, arXiv:1611.07004): a small conv net whose output is a map of
real/fake logits, one per overlapping patch. VQGAN (Esser et al. 2021, arXiv:2012.09841, eq. 7)
weights the generator's adversarial term by lambda = |grad_L(rec)| / (|grad_L(gan)| + 1e-4), the
gradients taken at the decoder's last layer L, so that neither term dominates; the adversarial
terms start after ``disc_start`` steps (a warm-up on the reconstruction alone).

Legend: B batch, C channels, H/W image side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arvision.metrics.lpips import LPIPS


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer discriminator: conv 4x4 stride 2 blocks doubling the width (at most 8x),
    BatchNorm and LeakyReLU(0.2), then two stride-1 convs down to one logit per patch. Small
    images get fewer layers (an output map of at least 1x1 needs image_size >= 3 * 2^layers)."""

    def __init__(self, in_channels: int, *, width: int = 64, num_layers: int = 3, image_size: int | None = None) -> None:
        super().__init__()
        if image_size is not None:
            while num_layers > 1 and image_size // 2**num_layers < 3:
                num_layers -= 1
        self.num_layers = num_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(width * prev, width * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(width * mult),
                       nn.LeakyReLU(0.2)]  # fmt: skip
        layers.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN's init, as in pix2pix and VQGAN
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x_BCHW: Tensor) -> Tensor:
        return self.net(x_BCHW)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss: mean(relu(1 - real)) / 2 + mean(relu(1 + fake)) / 2."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, *, max_weight: float = 1e4) -> Tensor:
    """VQGAN's lambda: the ratio of the two losses' gradient norms at ``last_layer`` (detached)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, max_weight).detach()


@dataclass
class LossTerms:
    """The generator-side loss and its parts (detached tensors, for logging: read with ``.item()``
    only when shown, so that a GPU step does not wait on every part)."""

    total: Tensor
    parts: dict[str, Tensor]


class ReconstructionLoss(nn.Module):
    """MSE + ``perceptual_weight`` * LPIPS + (after ``disc_start``) ``disc_weight`` * lambda * GAN.

    The discriminator (when ``disc_weight`` > 0) is trained by :meth:`discriminator_loss` on the
    same batch. The LPIPS network is frozen and not part of the state dict.
    """

    def __init__(self, in_channels: int, *, image_size: int | None = None, perceptual: LPIPS | None = None,
                 perceptual_weight: float = 0.0, disc_weight: float = 0.0, disc_start: int = 0,
                 disc_layers: int = 3) -> None:  # fmt: skip
        super().__init__()
        if perceptual_weight > 0 and perceptual is None:
            raise ValueError("a perceptual_weight > 0 needs the LPIPS network (--perceptual-net FILE ...)")
        self.perceptual = [perceptual] if perceptual is not None else []  # a list: not a registered submodule
        self.perceptual_weight, self.disc_weight, self.disc_start = perceptual_weight, disc_weight, disc_start
        self.discriminator = (PatchDiscriminator(in_channels, num_layers=disc_layers, image_size=image_size)
                              if disc_weight > 0 else None)  # fmt: skip

    def adversarial_at(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_start

    def forward(self, recon: Tensor, x: Tensor, *, step: int, last_layer: Tensor | None) -> LossTerms:
        mse = F.mse_loss(recon, x)
        rec = mse
        parts = {"mse": mse.detach()}
        if self.perceptual_weight > 0:
            p = self.perceptual[0](recon.float(), x.float()).mean()
            rec = rec + self.perceptual_weight * p
            parts["lpips"] = p.detach()
        if not self.adversarial_at(step):
            return LossTerms(rec, parts)
        d = self.discriminator
        d.requires_grad_(False)  # the generator step must not move the discriminator
        gan = -d(recon).mean()
        d.requires_grad_(True)
        weight = adaptive_weight(rec, gan, last_layer) if torch.is_grad_enabled() else rec.new_ones(())
        parts.update(gan=gan.detach(), gan_weight=weight)
        return LossTerms(rec + self.disc_weight * weight * gan, parts)

    def discriminator_loss(self, recon: Tensor, x: Tensor) -> Tensor:
        """Hinge loss of the discriminator on real ``x`` and the detached reconstructions."""
        assert self.discriminator is not None
        return hinge_d_loss(self.discriminator(x.detach()), self.discriminator(recon.detach()))
