"""A per-token diffusion head: continuous tokens sampled by a small denoising MLP.

MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization",
arXiv:2406.11838) replaces the softmax over a codebook by a diffusion model per token: the backbone
gives each position a vector z, and an AdaLN-conditioned MLP predicts the noise (and a learned
variance) of that token's continuous value. Training is the DDPM loss (eps MSE + the variational
bound term of improved DDPM, Nichol & Dhariwal 2021); sampling runs the ancestral sampler over a
respaced schedule. This file reproduces the official code (github.com/LTH14/mar @ fe470ac,
``models/diffloss.py`` and ``diffusion/``) in float32, parameter names included, so official
``diffloss.net.*`` weights load unchanged (tests/test_diffusion_head.py checks it against
../shared/fixtures/mar).

Legend: N rows (tokens over batch and positions, row-major), B batch, T positions, C backbone
width (``cond_dim``), D token channels, W MLP width, S steps of a diffusion process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arvision.config import Config
from arvision.nn.linear import Linear
from arvision.samplers.config import SamplingConfig
from arvision.samplers.rng import Rng, randn, randn_halves

NOISE_SCHEDULES = ("cosine", "linear")


@dataclass(frozen=True, kw_only=True)
class DiffusionHeadConfig(Config):
    """Args: token_dim: D; cond_dim: C; width, depth: the MLP (MAR's ``diffloss_w``/``diffloss_d``);
    train_steps: steps of the training process; noise_schedule: "cosine" (MAR) or "linear" (DDPM);
    sampling_steps: default respaced steps at sampling; batch_mul: times each row is repeated in the
    loss, each copy with its own timestep and noise (MAR's ``diffusion_batch_mul``); clip_xstart: at
    sampling, clamp the predicted clean token to [-clip_xstart, clip_xstart] before each step's mean
    (DDPM's ``clip_denoised`` for a known data range; 0 = off, as in MAR). MAR's cosine schedule ends
    at alpha_bar ~ 2e-9, so the first denoising step multiplies the error of the predicted noise by
    ~2e4: a model trained as long as MAR's predicts it precisely enough, a small one trained for
    minutes does not, and the clamp keeps that error from swamping the sample."""

    token_dim: int
    cond_dim: int
    width: int = 1024
    depth: int = 3
    train_steps: int = 1000
    noise_schedule: str = "cosine"
    sampling_steps: int = 100
    batch_mul: int = 4
    clip_xstart: float = 0.0

    def __post_init__(self) -> None:
        for name in ("token_dim", "cond_dim", "width", "depth", "train_steps", "batch_mul"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {self.noise_schedule!r}")
        if not self.clip_xstart >= 0:
            raise ValueError(f"clip_xstart must be >= 0 (0 = off), got {self.clip_xstart}")
        if not 1 <= self.sampling_steps <= self.train_steps:
            raise ValueError(f"sampling_steps must be in 1..train_steps={self.train_steps}, got {self.sampling_steps}")


# ---- the denoiser: official SimpleMLPAdaLN (names kept for checkpoints) ----------------------

def timestep_embedding(t_N: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (N, dim) of (original, 0..train_steps-1) timesteps: [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t_N.device)
    args = t_N[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, width), nn.SiLU(), Linear(width, width))

    def forward(self, t_N: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t_N, self.freq_dim))


class ResBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x))), shift/scale/gate from the time + condition vector y."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(Linear(width, width), nn.SiLU(), Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 3 * width))

    def forward(self, x_NW: Tensor, y_NW: Tensor) -> Tensor:
        shift, scale, gate = self.adaLN_modulation(y_NW).chunk(3, dim=-1)
        return x_NW + gate * self.mlp(modulate(self.in_ln(x_NW), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 2 * width))

    def forward(self, x_NW: Tensor, y_NW: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(y_NW).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x_NW), shift, scale))


class DenoiserMLP(nn.Module):
    """(x_t (N, D), original timestep (N,), z (N, C)) -> (N, 2D): eps, then variance values in [-1, 1]."""

    def __init__(self, cfg: DiffusionHeadConfig) -> None:
        super().__init__()
        W = cfg.width
        self.time_embed = TimestepEmbedder(W)
        self.cond_embed = Linear(cfg.cond_dim, W)
        self.input_proj = Linear(cfg.token_dim, W)
        self.res_blocks = nn.ModuleList(ResBlock(W) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(W, 2 * cfg.token_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: xavier-uniform linears, zero biases, N(0, 0.02) time MLP, zero adaLN and output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        zeroed = [b.adaLN_modulation[-1] for b in self.res_blocks] + [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for lin in zeroed:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x_ND: Tensor, t_N: Tensor, z_NC: Tensor) -> Tensor:
        x_NW = self.input_proj(x_ND)
        y_NW = self.time_embed(t_N) + self.cond_embed(z_NC)
        for block in self.res_blocks:
            x_NW = block(x_NW, y_NW)
        return self.final_layer(x_NW, y_NW)


# ---- Gaussian diffusion maths (official float64 tables, float32 arithmetic) ------------------

def beta_schedule(name: str, steps: int) -> list[float]:
    """Betas of the base process: improved-DDPM cosine (clipped at 0.999) or DDPM linear."""
    if name == "cosine":
        abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return [min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)]
    scale = 1000 / steps
    lo, hi = scale * 0.0001, scale * 0.02
    delta = (hi - lo) / (steps - 1) if steps > 1 else 0.0
    return [i * delta + lo for i in range(steps - 1)] + [hi]  # np.linspace's arithmetic


def spaced_timesteps(train_steps: int, steps: int) -> list[int]:
    """The ``steps`` original timesteps kept by respacing (official ``space_timesteps(T, "steps")``):
    evenly strided with a float accumulator and Python rounding, e.g. 100 of 1000 -> 0, 10, .., 989, 999."""
    stride = (train_steps - 1) / (steps - 1) if steps > 1 else 1
    kept, cur = [], 0.0
    for _ in range(steps):
        kept.append(round(cur))
        cur += stride
    return sorted(set(kept))


def _cumprod(values: list[float]) -> list[float]:
    out, acc = [], 1.0
    for v in values:
        acc *= v
        out.append(acc)
    return out


class DiffusionProcess:
    """One (respaced) process of S steps: timestep map (S,) and the posterior tables.

    Tables are built in float64 as in the official code; like its ``_extract_into_tensor`` a lookup
    returns float32 (N, 1), and every operation on tokens is float32."""

    def __init__(self, base_betas: list[float], steps: int) -> None:
        abar_base = _cumprod([1.0 - b for b in base_betas])
        self.timestep_map = torch.tensor(spaced_timesteps(len(base_betas), steps))
        betas, last = [], 1.0
        for i in self.timestep_map.tolist():  # respacing keeps alpha_bar at the kept steps
            betas.append(1 - abar_base[i] / last)
            last = abar_base[i]
        self.betas = torch.tensor(betas, dtype=torch.float64)
        abar = torch.tensor(_cumprod([1.0 - b for b in betas]), dtype=torch.float64)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        b = self.betas
        post_var = b * (1.0 - abar_prev) / (1.0 - abar)
        # variance 0 at step 0 is clipped to step 1's; a 1-step process (which the official code
        # cannot build) clips to beta instead. Step 0 never adds noise either way.
        clipped = torch.cat([post_var[1:2], post_var[1:]]) if len(b) > 1 else b
        tables = {
            "sqrt_abar": abar.sqrt(), "sqrt_1m_abar": (1.0 - abar).sqrt(),
            "sqrt_recip_abar": (1.0 / abar).sqrt(), "sqrt_recipm1_abar": (1.0 / abar - 1).sqrt(),
            "post_log_var": clipped.log(), "log_beta": b.log(),
            "coef_x0": b * abar_prev.sqrt() / (1.0 - abar), "coef_xt": (1.0 - abar_prev) * (1.0 - b).sqrt() / (1.0 - abar),
        }  # fmt: skip
        self._tables = {k: v.float() for k, v in tables.items()}

    def at(self, name: str, t_N: Tensor) -> Tensor:
        table = self._tables[name]
        if table.device != t_N.device:
            table = self._tables[name] = table.to(t_N.device)
        return table[t_N][:, None]

    def q_sample(self, x0_ND: Tensor, t_N: Tensor, noise_ND: Tensor) -> Tensor:
        return self.at("sqrt_abar", t_N) * x0_ND + self.at("sqrt_1m_abar", t_N) * noise_ND

    def p_mean_variance(self, out_N2D: Tensor, x_ND: Tensor, t_N: Tensor, clip: float = 0.0) -> dict[str, Tensor]:
        """p(x_{t-1} | x_t) from the model output: eps mean, learned-range variance; the predicted
        x_0 clamped to [-clip, clip] when ``clip`` > 0 (MAR: no clipping)."""
        eps_ND, v_ND = out_N2D.split(x_ND.shape[1], dim=1)
        frac = (v_ND + 1) / 2  # log variance between the posterior's (clipped) and beta's
        log_var = frac * self.at("log_beta", t_N) + (1 - frac) * self.at("post_log_var", t_N)
        x0 = self.at("sqrt_recip_abar", t_N) * x_ND - self.at("sqrt_recipm1_abar", t_N) * eps_ND
        if clip > 0:
            x0 = x0.clamp(-clip, clip)
        mean = self.at("coef_x0", t_N) * x0 + self.at("coef_xt", t_N) * x_ND
        return {"mean": mean, "variance": torch.exp(log_var), "log_variance": log_var, "pred_xstart": x0}

    def vb_bits(self, out_N2D: Tensor, x0_ND: Tensor, x_ND: Tensor, t_N: Tensor) -> Tensor:
        """Per-row VB term in bits: KL(q(x_{t-1}|x_t,x_0) || p) for t > 0, decoder NLL at t = 0."""
        true_mean = self.at("coef_x0", t_N) * x0_ND + self.at("coef_xt", t_N) * x_ND
        p = self.p_mean_variance(out_N2D, x_ND, t_N)
        kl = normal_kl(true_mean, self.at("post_log_var", t_N), p["mean"], p["log_variance"]).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0_ND, p["mean"], 0.5 * p["log_variance"]).mean(1) / math.log(2.0)
        return torch.where(t_N == 0, nll, kl)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability (nats) of the bin of width 2/255 around x (ADM's image decoder, tanh CDF)."""
    cdf = lambda v: 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * torch.pow(v, 3))))  # noqa: E731
    centered, inv_std = x - means, torch.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv_std * (centered + 1.0 / 255.0)), cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    mid = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, mid))


# ---- the head --------------------------------------------------------------------------------

@dataclass
class GuidedRows:
    """Backbone outputs of a guided step: guidance acts on eps inside every diffusion step, so the
    loop's :meth:`DiffusionHead.guide` only defers it. Mixing is uncond + weight (cond - uncond)."""

    cond: Tensor
    uncond: Tensor
    weight: float


class DiffusionHead(nn.Module):
    """Backbone vectors z -> continuous tokens (N, D): MAR's ``DiffLoss`` as a head part."""

    own_settings = ("diffusion_steps",)  # the sampling settings it reads (besides temperature)

    def __init__(self, config: DiffusionHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.net = DenoiserMLP(config)
        self._base_betas = beta_schedule(config.noise_schedule, config.train_steps)
        self._processes: dict[int, DiffusionProcess] = {}

    def process(self, steps: int) -> DiffusionProcess:
        """The training process respaced to ``steps`` steps (built once per step count)."""
        if steps < 1:
            raise ValueError(f"diffusion steps must be >= 1, got {steps}")
        if steps > self.config.train_steps:
            raise ValueError(f"diffusion steps must be <= train_steps={self.config.train_steps}, got {steps}")
        if steps not in self._processes:
            self._processes[steps] = DiffusionProcess(self._base_betas, steps)
        return self._processes[steps]

    def _check(self, name: str, x: Tensor, dim: int, what: str) -> Tensor:
        if x.ndim < 1 or x.shape[-1] != dim:
            raise ValueError(f"{name} must have last dimension {what}={dim}, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"NaN/inf in {name}")
        return x.reshape(-1, dim)

    def model_output(self, x_ND: Tensor, t_N: Tensor, z_NC: Tensor, steps: int, cfg_weight: float | None = None) -> Tensor:
        """The MLP at respaced steps ``t_N`` (N, 2D). With ``cfg_weight`` the rows are [cond; uncond],
        both halves see the cond half's x, eps is mixed, each half keeps its variance (forward_with_cfg)."""
        if not x_ND.shape[0] == z_NC.shape[0] == t_N.shape[0]:
            raise ValueError(f"x, t and z must have the same rows, got {x_ND.shape[0]}, {t_N.shape[0]}, {z_NC.shape[0]}")
        if cfg_weight is not None and x_ND.shape[0] % 2:
            raise ValueError(f"guided rows must be [cond; uncond] (an even count), got {x_ND.shape[0]}")
        t_orig = self.process(steps).timestep_map.to(t_N.device)[t_N]
        if cfg_weight is None:
            return self.net(x_ND, t_orig, z_NC)
        n, D = x_ND.shape[0] // 2, self.config.token_dim
        out = self.net(torch.cat([x_ND[:n], x_ND[:n]]), t_orig, z_NC)
        cond, uncond = out[:, :D].split(n)
        eps = uncond + cfg_weight * (cond - uncond)
        return torch.cat([torch.cat([eps, eps]), out[:, D:]], dim=1)

    def p_mean_variance(self, x_ND: Tensor, t_N: Tensor, z_NC: Tensor, *, steps: int,
                        cfg_weight: float | None = None) -> dict[str, Tensor]:  # fmt: skip
        """mean, variance, log_variance, pred_xstart of p(x_{t-1} | x_t) at respaced steps ``t_N``."""
        return self.process(steps).p_mean_variance(self.model_output(x_ND, t_N, z_NC, steps, cfg_weight), x_ND, t_N)

    def training_losses(self, z_NC: Tensor, target_ND: Tensor, t_N: Tensor, noise_ND: Tensor) -> dict[str, Tensor]:
        """Per-row loss = mse + vb at training timesteps ``t_N`` with the given noise. The VB term sees
        the eps prediction detached, so it trains only the variance (improved DDPM's L_hybrid)."""
        proc = self.process(self.config.train_steps)
        x_t = proc.q_sample(target_ND, t_N, noise_ND)
        out = self.model_output(x_t, t_N, z_NC, self.config.train_steps)
        eps, var_values = out.split(self.config.token_dim, dim=1)
        vb = proc.vb_bits(torch.cat([eps.detach(), var_values], dim=1), target_ND, x_t, t_N)
        mse = ((noise_ND - eps) ** 2).mean(1)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def loss(self, z_NC: Tensor, target_ND: Tensor, mask_N: Tensor | None = None, rng: torch.Generator | None = None) -> Tensor:
        """MAR's diffusion loss: rows (any leading shape, flattened row-major) tiled ``batch_mul``
        times, t ~ U{0..train_steps-1} then noise ~ N(0, 1) drawn from ``rng`` in that order; the mean
        over rows, or over rows with mask 1 (MAR: the masked positions)."""
        z = self._check("z", z_NC, self.config.cond_dim, "cond_dim")
        x0 = self._check("target", target_ND, self.config.token_dim, "token_dim")
        if z.shape[0] != x0.shape[0]:
            raise ValueError(f"z has {z.shape[0]} rows but target has {x0.shape[0]}")
        k = self.config.batch_mul
        z, x0 = z.repeat(k, 1), x0.repeat(k, 1)
        t = torch.randint(0, self.config.train_steps, (x0.shape[0],), generator=rng, device=x0.device)
        noise = torch.randn(x0.shape, generator=rng, dtype=x0.dtype, device=x0.device)
        loss_N = self.training_losses(z, x0, t, noise)["loss"]
        if mask_N is None:
            return loss_N.mean()
        if mask_N.numel() * k != loss_N.shape[0]:
            raise ValueError(f"mask has {mask_N.numel()} entries, expected one per row ({loss_N.shape[0] // k})")
        mask = mask_N.reshape(-1).to(loss_N.dtype).repeat(k)
        return (loss_N * mask).sum() / mask.sum()

    @torch.no_grad()
    def sample_rows(self, z_NC: Tensor, *, steps: int, temperature: float, rng: Rng,
                    cfg_weight: float | None = None) -> Tensor:  # fmt: skip
        """Ancestral sampling of one token per row (official ``DiffLoss.sample``). With ``cfg_weight``
        the rows are [cond (n); uncond (n)] and the n cond samples are returned. Draws from ``rng``:
        x_T (n or N rows, shared by both halves), then one (N, D) draw per step, t = S-1..0."""
        z = self._check("z", z_NC, self.config.cond_dim, "cond_dim")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        proc, N, D = self.process(steps), z.shape[0], self.config.token_dim
        if cfg_weight is not None and N % 2:
            raise ValueError(f"guided sampling needs [cond; uncond] rows (an even count), got {N}")
        n = N // 2 if cfg_weight is not None else N
        x = randn((n, D), rng, dtype=z.dtype, device=z.device)
        x = torch.cat([x, x]) if cfg_weight is not None else x
        for i in reversed(range(steps)):
            t_N = torch.full((N,), i, dtype=torch.long, device=z.device)
            p = proc.p_mean_variance(self.model_output(x, t_N, z, steps, cfg_weight), x, t_N, self.config.clip_xstart)
            kw = {"dtype": x.dtype, "device": x.device}
            noise = randn_halves(n, D, rng, **kw) if cfg_weight is not None else randn(x.shape, rng, **kw)  # drawn at t = 0 too
            x = p["mean"] + torch.exp(0.5 * p["log_variance"]) * noise * temperature if i > 0 else p["mean"]
        return x[:n]

    # -- the decoding loop's head protocol (arvision.samplers.order.Head) --

    def forward(self, z_BTC: Tensor) -> Tensor:
        """What a decoding step hands the sampler: the backbone vectors themselves (the tokens are
        drawn from them in :meth:`sample`; training uses :meth:`loss`)."""
        return z_BTC

    def guide(self, cond_BTC: Tensor, uncond_BTC: Tensor, weight: float, schedule: str) -> GuidedRows:
        """Defer guidance to the diffusion steps; "linear" (VAR's (1+w) cond - w uncond) is weight 1 + w."""
        return GuidedRows(cond_BTC, uncond_BTC, 1 + weight if schedule == "linear" else weight)

    def sample(self, out: Tensor | GuidedRows, s: SamplingConfig, rng: Rng) -> Tensor:
        """Tokens (B, T, D) for backbone outputs (B, T, C), rows in (b, t) order; steps from
        ``s.diffusion_steps`` when set, else the config's ``sampling_steps``."""
        steps = getattr(s, "diffusion_steps", None) or self.config.sampling_steps
        cond = out.cond if isinstance(out, GuidedRows) else out
        if cond.ndim != 3:
            raise ValueError(f"expected backbone outputs (B, T, C), got shape {tuple(cond.shape)}")
        B, T, C = cond.shape
        if isinstance(out, GuidedRows):
            z = torch.cat([out.cond.reshape(B * T, C), out.uncond.reshape(B * T, C)])
            x = self.sample_rows(z, steps=steps, temperature=s.temperature, rng=rng, cfg_weight=out.weight)
        else:
            x = self.sample_rows(cond.reshape(B * T, C), steps=steps, temperature=s.temperature, rng=rng)
        return x.view(B, T, self.config.token_dim)
