"""The diffusion head reproduces MAR's official DiffLoss (../shared/fixtures/mar, LTH14/mar @ fe470ac).

The fixture's ``diffloss.net.*`` weights load by stripping the ``diffloss.`` prefix; every
reference output of the MLP, the Gaussian-diffusion maths, the training loss and the seeded
sampling runs is checked at the fixture's tolerance, max|ref - got| <= 1e-5 + 1e-4 max|ref|.
"""

from __future__ import annotations

import json

import pytest
import torch

from arvision.generators.diffusion import DiffusionHead, DiffusionHeadConfig, GuidedRows, spaced_timesteps
from arvision.samplers.config import SamplingConfig

from conftest import shared_path


def close(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err, bar = (got.double() - ref.double()).abs().max().item(), 1e-5 + 1e-4 * ref.double().abs().max().item()
    assert err <= bar, f"max error {err:.3g} > {bar:.3g}"


def mar_config(**changes) -> DiffusionHeadConfig:
    cfg = json.loads(shared_path("fixtures", "mar", "config.json").read_text())["mar"]["kwargs"]
    return DiffusionHeadConfig(token_dim=cfg["vae_embed_dim"], cond_dim=cfg["decoder_embed_dim"], width=cfg["diffloss_w"],
                               depth=cfg["diffloss_d"], sampling_steps=int(cfg["num_sampling_steps"]),
                               batch_mul=cfg["diffusion_batch_mul"]).replace(**changes)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Rows of 16 numbers: threads only add overhead (and stall badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mar():
    state = torch.load(shared_path("fixtures", "mar", "mar_state.pth"), weights_only=True)["model_ema"]
    net_state = {k.removeprefix("diffloss."): v for k, v in state.items() if k.startswith("diffloss.")}
    head = DiffusionHead(mar_config()).eval()
    head.load_state_dict(net_state, strict=True)
    fx = torch.load(shared_path("fixtures", "mar", "fixture.pt"), weights_only=True)
    return head, net_state, fx


def test_mlp_outputs(mar) -> None:
    head, _, fx = mar
    d = fx["diffloss"]
    with torch.no_grad():
        close(head.net(d["x_t"], d["t"], d["c"]), d["net_out"])
        # official forward_with_cfg takes original timesteps: the training process maps them unchanged
        close(head.model_output(d["cfg_x"], d["cfg_t"], d["cfg_c"], 1000, d["cfg_scale"]), d["net_cfg_out"])


def test_schedules(mar) -> None:
    head, _, fx = mar
    d = fx["diffloss"]
    assert torch.equal(head.process(100).timestep_map, d["gen_timestep_map"])
    close(head.process(100).betas, d["gen_betas"])
    close(head.process(1000).betas, d["train_betas"])
    assert spaced_timesteps(1000, 1000) == list(range(1000)) and spaced_timesteps(1000, 1) == [0]


def test_p_mean_variance(mar) -> None:
    head, _, fx = mar
    d = fx["diffloss"]
    with torch.no_grad():
        p = head.p_mean_variance(d["x_t"], d["pmv_t"], d["c"], steps=100)
        for key in ("mean", "variance", "log_variance", "pred_xstart"):
            close(p[key], d[f"pmv_{key}"])
        for t in range(100):
            t_N = torch.full((4,), t)
            p = head.p_mean_variance(d["all_t_x"], t_N, d["all_t_c"], steps=100)
            for key in ("mean", "log_variance", "pred_xstart"):
                close(p[key], d[f"all_t_{key}"][t])
            p = head.p_mean_variance(d["all_t_cfg_x"], t_N, d["all_t_cfg_c"], steps=100, cfg_weight=d["all_t_cfg_scale"])
            close(p["mean"], d["all_t_cfg_mean"][t])
            close(p["log_variance"], d["all_t_cfg_log_variance"][t])


def test_training_losses(mar) -> None:
    head, net_state, fx = mar
    d = fx["diffloss"]
    terms = head.training_losses(d["c"], d["loss_target"], d["loss_t"], d["loss_noise"])
    for key in ("mse", "vb", "loss"):
        close(terms[key].detach(), d[f"loss_terms_{key}"])
    close((terms["loss"] * d["loss_mask"]).sum().detach() / d["loss_mask"].sum(), d["loss_masked"])
    # DiffLoss.forward itself does not tile rows (MAR.forward_loss does): batch_mul 1
    one = DiffusionHead(mar_config(batch_mul=1))
    one.load_state_dict(net_state, strict=True)
    rng = torch.Generator().manual_seed(d["forward_seed"])
    assert torch.equal(torch.randint(0, 1000, (6,), generator=rng), d["forward_t"])
    close(torch.randn((6, 16), generator=rng), d["forward_noise"])
    rng = torch.Generator().manual_seed(d["forward_seed"])
    close(one.loss(d["c"], d["loss_target"], d["loss_mask"], rng).detach(), d["forward_loss"])


def test_mar_train_loss(mar) -> None:
    head, _, fx = mar
    tl = fx["train_loss"]
    target = fx["mar_tf"]["x_tokens"].reshape(32, 16)
    z = tl["z"].reshape(32, 32)
    terms = head.training_losses(z.repeat(4, 1), target.repeat(4, 1), tl["t"], tl["noise"])
    close(terms["loss"].detach(), tl["per_row_loss"])
    close(terms["mse"].detach(), tl["per_row_mse"])
    close(terms["vb"].detach(), tl["per_row_vb"])
    # the only torch draws of MAR.forward (eval mode) are the loss's: t, then noise
    got = head.loss(tl["z"], fx["mar_tf"]["x_tokens"], tl["mask"], torch.Generator().manual_seed(tl["torch_seed"]))
    close(got.detach(), tl["loss"])


@pytest.mark.parametrize("run", ["cfg_linear", "cfg_constant", "nocfg", "uncond"])
def test_sampling_runs(mar, run: str) -> None:
    head, _, fx = mar
    ref = fx["sampling"][run]
    cfg = ref["kwargs"]["cfg"]
    rng = torch.Generator().manual_seed(ref["torch_seed"])
    for step in ref["steps"]:  # the run's only torch draws are DiffLoss.sample's, in step order
        n = step["init_noise"].shape[0]
        peek = torch.Generator().set_state(rng.get_state())
        close(torch.randn((n, 16), generator=peek), step["init_noise"])
        out = head.sample_rows(step["z"], steps=100, temperature=step["temperature"], rng=rng,
                               cfg_weight=float(step["cfg_iter"]) if cfg != 1.0 else None)  # fmt: skip
        close(out, step["sampled"][:n])


def test_loss_gradients_and_errors() -> None:
    head = DiffusionHead(DiffusionHeadConfig(token_dim=4, cond_dim=6, width=8, depth=2, train_steps=50, sampling_steps=5))
    for p in head.parameters():  # official init zeroes adaLN and output layers: perturb so every grad flows
        torch.nn.init.normal_(p, std=0.3)
    z, x = torch.randn(2, 3, 6), torch.randn(2, 3, 4)
    loss = head.loss(z, x, torch.tensor([[1.0, 0, 1], [1, 1, 0]]), torch.Generator().manual_seed(0))
    assert loss.isfinite()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with pytest.raises(ValueError, match="diffusion steps must be >= 1"):
        head.sample_rows(z[0], steps=0, temperature=1.0, rng=None)
    with pytest.raises(ValueError, match="train_steps"):
        head.sample_rows(z[0], steps=51, temperature=1.0, rng=None)
    with pytest.raises(ValueError, match="NaN/inf in z"):
        head.loss(torch.full((2, 6), float("nan")), torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN/inf in target"):
        head.loss(torch.randn(2, 6), torch.tensor([[float("inf"), 0, 0, 0]] * 2))
    with pytest.raises(ValueError, match="cond_dim=6"):
        head.loss(torch.randn(2, 5), torch.randn(2, 4))
    with pytest.raises(ValueError, match="sampling_steps"):
        DiffusionHeadConfig(token_dim=4, cond_dim=6, train_steps=10, sampling_steps=20)


def test_head_protocol_and_determinism() -> None:
    head = DiffusionHead(DiffusionHeadConfig(token_dim=4, cond_dim=6, width=8, depth=1, train_steps=100, sampling_steps=10))
    cond, uncond = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    g = head.guide(cond, uncond, 0.5, "linear")
    assert isinstance(g, GuidedRows) and g.weight == 1.5 and head.guide(cond, uncond, 2.0, "constant").weight == 2.0
    s = SamplingConfig()
    x1 = head.sample(g, s, torch.Generator().manual_seed(3))
    x2 = head.sample(g, s, torch.Generator().manual_seed(3))
    assert x1.shape == (2, 3, 4) and torch.equal(x1, x2) and x1.isfinite().all()
    assert head.sample(cond, s, torch.Generator().manual_seed(3)).shape == (2, 3, 4)
    one_step = head.sample_rows(cond.flatten(0, 1), steps=1, temperature=1.0, rng=None)  # 1 step: deterministic mean
    assert one_step.isfinite().all()


def test_clip_xstart_bounds_the_samples_of_an_imprecise_model() -> None:
    """MAR's schedule amplifies the first step's noise error ~2e4x; clip_xstart keeps samples in range."""
    cfg = DiffusionHeadConfig(token_dim=4, cond_dim=8, width=16, depth=2, sampling_steps=20)
    torch.manual_seed(0)
    head = DiffusionHead(cfg)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # an untrained, imprecise noise prediction
    z = torch.randn(32, 8)
    free = head.sample_rows(z, steps=20, temperature=1.0, rng=torch.Generator().manual_seed(0))
    clipped = DiffusionHead(cfg.replace(clip_xstart=3.0))
    clipped.load_state_dict(head.state_dict())
    bounded = clipped.sample_rows(z, steps=20, temperature=1.0, rng=torch.Generator().manual_seed(0))
    assert free.abs().max() > 100 and bounded.abs().max() <= 3.0
    with pytest.raises(ValueError, match="clip_xstart"):
        cfg.replace(clip_xstart=-1.0)
