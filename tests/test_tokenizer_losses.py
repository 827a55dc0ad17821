"""Losses for tokenizers of real images: LPIPS from local files (safe loading, clear errors), the
PatchGAN discriminator, VQGAN's adaptive weight, EMA and bf16 autocast in `train tokenizer`."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from arvision.errors import ModelFileError
from arvision.metrics.lpips import LPIPS, load_lpips
from arvision.runtime import cpu_has_bf16
from arvision.train.adversarial import PatchDiscriminator, adaptive_weight, hinge_d_loss
from arvision.train.tokenizer import train_tokenizer
from test_cli import run


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory) -> tuple[str, str]:
    """Random weights in the published layouts: torchvision's vgg16 state dict and LPIPS's vgg.pth."""
    root = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    net = LPIPS()
    vgg = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("features.")}
    for k, v in vgg.items():
        if k.endswith("weight"):
            torch.nn.init.kaiming_normal_(v)
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's file also has the classifier: ignored
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, root / "vgg16.pth")
    torch.save(lins, root / "vgg.pth")
    return str(root / "vgg16.pth"), str(root / "vgg.pth")


def test_lpips_loads_from_the_published_layouts_and_measures_distance(lpips_files, tmp_path) -> None:
    net = load_lpips(lpips_files)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(net(x, x), torch.zeros(2))
    near, far = net(x, x + 0.05 * torch.randn_like(x)), net(x, x + 0.5 * torch.randn_like(x))
    assert (near > 0).all() and (far > near).all()
    assert torch.allclose(net(x, x.flip(0)), net(x.flip(0), x))  # symmetric
    gray = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.allclose(net(gray, -gray), net(gray.expand(-1, 3, -1, -1), -gray.expand(-1, 3, -1, -1)))
    # one merged .safetensors file, with LPIPS's own net.sliceK.N names, gives the same network
    vgg, lins = torch.load(lpips_files[0], weights_only=True), torch.load(lpips_files[1], weights_only=True)
    taps = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
    renamed = {f"net.slice{s + 1}.{k.split('.')[1]}.{k.split('.')[2]}": v for k, v in vgg.items() if k.startswith("features")
               for s, (a, b) in enumerate(taps) if a <= int(k.split(".")[1]) < b}  # fmt: skip
    save_file({**renamed, **lins}, tmp_path / "lpips.safetensors")
    assert torch.equal(load_lpips(tmp_path / "lpips.safetensors")(x, -x), net(x, -x))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_lpips_bad_files_are_clear_errors(lpips_files, tmp_path) -> None:
    with pytest.raises(ModelFileError, match="no such file .*nope.pth': expected LPIPS weights"):
        load_lpips([tmp_path / "nope.pth"])
    with pytest.raises(ModelFileError, match="no LPIPS lin layers"):
        load_lpips(lpips_files[0])  # only the VGG half
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, tmp_path / "resnet.pth")
    with pytest.raises(ModelFileError, match="not the weights of LPIPS's VGG-16 network"):
        load_lpips([tmp_path / "resnet.pth", lpips_files[1]])
    bad = torch.load(lpips_files[0], weights_only=True)
    bad["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(bad, tmp_path / "wrong.pth")
    with pytest.raises(ModelFileError, match=r"wrong shapes: features.0.weight \(64, 1, 3, 3\)"):
        load_lpips([tmp_path / "wrong.pth", lpips_files[1]])
    data = open(lpips_files[1], "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.pth' is truncated or corrupt"):
        load_lpips([lpips_files[0], tmp_path / "cut.pth"])
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(print))  # arbitrary objects are never unpickled
    with pytest.raises(ModelFileError, match="evil.pth' cannot be read safely"):
        load_lpips([lpips_files[0], tmp_path / "evil.pth"])
    neg = {k: -v for k, v in torch.load(lpips_files[1], weights_only=True).items()}
    torch.save(neg, tmp_path / "neg.pth")
    with pytest.raises(ModelFileError, match="non-negative"):
        load_lpips([lpips_files[0], tmp_path / "neg.pth"])


def test_hinge_loss_and_adaptive_weight_in_closed_form() -> None:
    assert hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-3.0, 1.0])).item() == pytest.approx(0.5 * (0.5 + 1.0))
    w = torch.randn(4, requires_grad=True)
    a = torch.randn(4)
    rec, gan = (w * a).sum(), 4 * (w * a).sum()
    assert adaptive_weight(rec, gan, w).item() == pytest.approx(a.norm().item() / (4 * a.norm().item() + 1e-4))
    d = PatchDiscriminator(1, num_layers=2)
    assert d(torch.zeros(3, 1, 28, 28)).shape[:2] == (3, 1)


def _train(out, lpips_files, **kw):
    return train_tokenizer(out, preset="tiny-vq", progress=False, eval_limit=16, perceptual_weight=0.5,
                           perceptual_net=tuple(lpips_files), disc_weight=0.5, disc_start=2, ema=0.5, **kw)  # fmt: skip


def test_training_with_every_loss_resumes_exactly_and_saves_the_ema(lpips_files, tmp_path) -> None:
    full = _train(tmp_path / "full", lpips_files)
    assert _train(tmp_path / "cut", lpips_files, stop_after=3) == {"stopped_at": 3}
    resumed = train_tokenizer(tmp_path / "cut", resume=True, progress=False, eval_limit=16)
    assert resumed["psnr"] == full["psnr"]
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    ema = ckpt["ema"]
    assert all(torch.equal(a[k], ema[k]) for k in a)  # the saved weights are the EMA's
    assert any(not torch.equal(ema[k], ckpt["model"][k]) for k in a)
    assert "discriminator.net.0.weight" in ckpt["criterion"]
    import json

    card = json.loads((tmp_path / "full" / "config.json").read_text())["info"]["training"]
    assert card["disc_weight"] == 0.5 and card["ema"] == 0.5 and card["perceptual_weight"] == 0.5


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no AVX512-BF16/AMX")
def test_bf16_autocast_training(tmp_path) -> None:
    m = train_tokenizer(tmp_path / "bf16", preset="tiny-vq", progress=False, eval_limit=16, mixed_precision="bf16")
    assert m["psnr"] > 0


@pytest.mark.parametrize("args,match", [
    (["--perceptual-weight", "0.1"], "needs the LPIPS weights"),
    (["--perceptual-weight", "0.1", "--perceptual-net", "/no/vgg16.pth"], "no such file '/no/vgg16.pth'"),
    (["--disc-weight", "-1"], "must be >= 0"),
    (["--ema", "1.5"], "ema must be in"),
    (["--preset", "tiny-flexscale", "--disc-weight", "0.1"], "computes its own loss"),
])  # fmt: skip
def test_bad_loss_settings_are_clear_errors_before_any_work(args, match, tmp_path, capsys) -> None:
    preset = [] if "--preset" in args else ["--preset", "tiny-vq"]
    code, _, err = run(capsys, "train", "tokenizer", *preset, *args, "--out", str(tmp_path / "t"), "--no-progress")
    assert code == 2 and match in err and "Traceback" not in err, err
    assert not (tmp_path / "t" / "checkpoint.pt").exists()
