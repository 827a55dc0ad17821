"""Test-time search (issue 16): rewards, best-of-N, TTS-VAR. Equivalences first (a search that keeps
rows decodes what the plain loop decodes), then the selection rules, then the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arvision.pipeline import Pipeline
from arvision.rewards import ClassifierReward, RealismReward, check_scores, get_reward
from arvision.samplers import decode
from arvision.samplers.loop import DecodeRun
from arvision.samplers.search import TTSVAR, BestOfN, _potential, best_of_n, kmeans_select, tts_var

from test_generators import build

LABELS = torch.tensor([1, 4, 7])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build("tiny-scale")


def brightness(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A reward with a known optimum: the mean pixel value."""
    return images.mean((1, 2, 3))


# -- the batch follows the selection ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-scale", "tiny-raster", "tiny-markov-scale"])
@pytest.mark.parametrize("guided", [True, False])
def test_selected_rows_decode_what_the_plain_loop_decodes(name, guided) -> None:
    """Greedy decoding: after select(rows) mid-way, row i ends with the plain run's tokens of rows[i]
    (state, condition rows, guidance rows and KV cache all followed the selection)."""
    torch.manual_seed(0)
    tok, gen = build(name)
    s = gen.config.sampling.replace(top_k=1)
    s = s if guided else s.replace(cfg=0.0 if s.cfg_schedule == "linear" else 1.0)
    plain = decode(gen, tok, LABELS, s, torch.Generator().manual_seed(0)).tokens
    rows = torch.tensor([2, 2, 0, 1])
    run = DecodeRun(gen, tok, LABELS, s, torch.Generator().manual_seed(0))
    for i, step in enumerate(run.plan):
        run.step(step)
        if i == len(run.plan) // 2:
            run.select(rows)
    assert torch.equal(run.state.tokens_BL, plain[rows])
    assert run.candidate_passes == len(run.plan) // 2 * 3 + 3 + (len(run.plan) - len(run.plan) // 2 - 1) * 4


def test_next_scale_preview_is_the_decoded_latent_so_far(tiny) -> None:
    tok, gen = tiny
    run = DecodeRun(gen, tok, LABELS, gen.config.sampling, torch.Generator().manual_seed(0))
    for step in run.plan:
        run.step(step)
    torch.testing.assert_close(run.order.preview(run.state), tok.decode(run.state.tokens_BL), rtol=0, atol=1e-5)


# -- best-of-N ---------------------------------------------------------------------------------------
def test_best_of_n_keeps_the_highest_reward_of_each_request(tiny) -> None:
    tok, gen = tiny
    s = gen.config.sampling
    out, images, scores = best_of_n(gen, tok, LABELS, s, torch.Generator().manual_seed(3), reward=brightness, n=4, decode_fn=decode)
    cands = decode(gen, tok, LABELS.repeat_interleave(4), s, torch.Generator().manual_seed(3)).tokens
    cand_scores = brightness(tok.decode(cands).add(1).div(2).clamp(0, 1), None).view(3, 4)
    best = cand_scores.argmax(1) + torch.arange(3) * 4
    assert torch.equal(out.tokens, cands[best])
    torch.testing.assert_close(scores, cand_scores.amax(1))
    torch.testing.assert_close(images, tok.decode(cands[best]))
    assert out.stats.candidate_passes == 4 * 3 * len(gen.config.patch_nums) and out.stats.reward_evaluations == 12


def test_best_of_one_is_plain_sampling(tiny) -> None:
    tok, gen = tiny
    pipe = Pipeline(tok, gen)
    plain = pipe.sample([1, 4], 2, seed=5)
    bon = pipe.sample([1, 4], 2, seed=5, search="best-of-n", reward=brightness, budget=1)
    assert torch.equal(bon.tokens, plain.tokens) and torch.equal(bon.images, plain.images)
    torch.testing.assert_close(bon.scores, brightness(plain.images, plain.labels))


def test_best_of_n_works_for_every_order() -> None:
    for name in ("tiny-raster", "tiny-masked", "tiny-neighbor"):
        tok, gen = build(name)
        out = Pipeline(tok, gen).sample([0, 3], 1, seed=0, search=BestOfN(n=3), reward=brightness)
        assert out.images.shape[0] == 2 and out.scores.shape == (2,) and out.stats.candidate_passes == 3 * 2 * len(
            DecodeRun(gen, tok, LABELS[:1], gen.config.sampling).plan)


# -- TTS-VAR ------------------------------------------------------------------------------------------
def test_tts_var_runs_its_schedule_and_keeps_the_best_final_candidate(tiny) -> None:
    tok, gen = tiny
    S = len(gen.config.patch_nums)  # 4 scales
    cfg = TTSVAR(batch_sizes=(6, 3, 3, 2), cluster_scales=(0,), resample_scales=(2,))
    seen = []
    out, images, scores = tts_var(gen, tok, LABELS, gen.config.sampling, torch.Generator().manual_seed(0),
                                  reward=lambda x, y: seen.append(len(x)) or brightness(x, y), budget=4, config=cfg)  # fmt: skip
    assert seen == [3 * 3, 3 * 2]  # resample after scale 2 (3 candidates each), then the final 2 candidates
    assert out.stats.candidate_passes == 3 * (6 + 3 + 3 + 2) and out.stats.reward_evaluations == 15
    assert out.tokens.shape == (3, gen.num_tokens) and out.stats.images == 3 and out.stats.forward_passes == S
    torch.testing.assert_close(images, tok.decode(out.tokens))
    torch.testing.assert_close(scores, brightness(images.add(1).div(2).clamp(0, 1), None))


def test_tts_var_is_seeded(tiny) -> None:
    tok, gen = tiny
    pipe = Pipeline(tok, gen)
    a = pipe.sample([2, 5], 2, seed=1, search="tts-var", reward=brightness, budget=3)
    b = pipe.sample([2, 5], 2, seed=1, search="tts-var", reward=brightness, budget=3)
    assert torch.equal(a.tokens, b.tokens) and a.stats.candidate_passes <= 3 * 4 * 4


def test_tts_var_improves_the_reward_over_plain_sampling(tiny) -> None:
    tok, gen = tiny
    pipe = Pipeline(tok, gen)
    plain = brightness(pipe.sample(list(range(10)), 4, seed=0).images, None).mean()
    searched = pipe.sample(list(range(10)), 4, seed=0, search="tts-var", reward=brightness, budget=4).scores.mean()
    assert searched > plain


@pytest.mark.parametrize("S", [4, 6, 10, 13])
@pytest.mark.parametrize("budget", [1, 2, 4, 8])
def test_default_schedules_descend_and_fit_the_budget(S, budget) -> None:
    sizes, clusters, resample = TTSVAR().schedule(S, budget)
    assert len(sizes) == S and sum(sizes) <= budget * S
    assert all(a >= b for a, b in zip(sizes, sizes[1:])), sizes
    assert not set(clusters) & set(resample) and all(0 <= k < S - 1 for k in clusters + resample)
    if budget >= 2:
        assert sizes[-1] >= 2, "the last scale keeps a choice for the final selection"
        assert sum(sizes) >= (budget - 1) * S, "the schedule uses most of the budget"


def test_kmeans_keeps_one_candidate_per_cluster() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(5, 2, generator=g) for c in centres])
    picked = kmeans_select(x, 3, torch.Generator().manual_seed(1))
    assert sorted((picked // 5).tolist()) == [0, 1, 2]
    assert len(set(kmeans_select(torch.zeros(6, 2), 4, None).tolist())) == 4  # identical candidates: still distinct rows


def test_potentials_read_the_lineage_history() -> None:
    h = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    assert _potential(h, "value").tolist() == [2.0, 4.0]
    assert _potential(h, "diff").tolist() == [-1.0, 5.0]
    assert _potential(h, "max").tolist() == [3.0, 4.0]
    assert _potential(h, "sum").tolist() == [6.0, 3.0]


# -- rewards ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_test():
    from arvision.data import load_mnist

    images, labels = load_mnist("test")
    return images[:200, None].float() / 255, labels[:200].long()


def test_classifier_reward_prefers_the_requested_digit(mnist_test) -> None:
    x, y = mnist_test
    r = ClassifierReward()
    right, wrong = r(x, y), r(x, (y + 1) % 10)
    assert right.shape == (200,) and (right > np.log(0.5)).float().mean() > 0.97 and (right > wrong).all()
    assert get_reward("mnist-classifier")(x[:2], y[:2]).shape == (2,)


def test_realism_reward_scores_real_digits_above_noise(mnist_test, tmp_path) -> None:
    from arvision.data import load_mnist

    ref, _ = load_mnist("train")
    np.savez(tmp_path / "ref.npz", arr_0=ref[:2000].numpy())
    r = RealismReward(str(tmp_path / "ref.npz"))
    real = r(mnist_test[0][:100])
    noise = r(torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    shifted = r(mnist_test[0][:100].roll(7, 2))  # digits pushed off-centre: not what MNIST looks like
    assert real.median() > 0.8 and real.median() > 2 * shifted.median() and real.median() > 4 * noise.median()


# -- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scores, match", [
    (torch.zeros(2), r"shape \(3,\)"), (torch.zeros(3, 2), r"shape \(3,\)"), ("abc", "one float per image"),
    (torch.tensor([0.0, float("nan"), 1.0]), "NaN"), (torch.tensor([0.0, float("inf"), 1.0]), "NaN or infinite"),
])  # fmt: skip
def test_reward_output_is_checked(scores, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        check_scores(scores, 3)


def test_search_errors(tiny) -> None:
    tok, gen = tiny
    pipe = Pipeline(tok, gen)
    with pytest.raises(ValueError, match="needs reward="):
        pipe.sample([1], search="tts-var", budget=2)
    with pytest.raises(ValueError, match="budget=0 is smaller than the request"):
        pipe.sample([1], search="tts-var", reward=brightness, budget=0)
    with pytest.raises(ValueError, match="needs budget"):
        pipe.sample([1], search="best-of-n", reward=brightness)
    with pytest.raises(ValueError, match="pass search="):
        pipe.sample([1], reward=brightness, budget=2)
    with pytest.raises(ValueError, match="shape"):
        pipe.sample([1, 2], search="best-of-n", reward=lambda x, y: x.mean(), budget=2)
    with pytest.raises(ValueError, match="NaN"):
        pipe.sample([1], search="tts-var", reward=lambda x, y: x.mean((1, 2, 3)) * float("nan"), budget=2)
    with pytest.raises(ValueError, match="unknown search"):
        pipe.sample([1], search="beam", reward=brightness, budget=2)
    with pytest.raises(ValueError, match="unknown reward"):
        pipe.sample([1], search="best-of-n", reward="aesthetics", budget=2)
    with pytest.raises(ValueError, match="cannot grow"):
        pipe.sample([1], search=TTSVAR(batch_sizes=(2, 3, 3, 3), cluster_scales=(0,), resample_scales=(1,)), reward=brightness, budget=4)
    with pytest.raises(ValueError, match="neither a cluster nor a resample"):
        pipe.sample([1], search=TTSVAR(batch_sizes=(4, 4, 2, 2), cluster_scales=(0,), resample_scales=(2,)), reward=brightness, budget=4)
    with pytest.raises(ValueError, match="more than budget"):
        pipe.sample([1], search=TTSVAR(batch_sizes=(8, 8, 4, 4)), reward=brightness, budget=2)
    with pytest.raises(ValueError, match="one candidate count per scale"):
        pipe.sample([1], search=TTSVAR(batch_sizes=(2, 2)), reward=brightness, budget=2)
    with pytest.raises(ValueError, match="0..2 for 4 scales"):
        pipe.sample([1], search=TTSVAR(cluster_scales=(3,)), reward=brightness, budget=2)
    with pytest.raises(ValueError, match="potential must be"):
        TTSVAR(potential="best")
    with pytest.raises(TypeError, match="unknown sampling option"):  # editing has no search
        pipe.sample_edit(torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16, dtype=torch.bool), classes=1, search="best-of-n",
                         reward=brightness, budget=2)  # fmt: skip


def test_tts_var_needs_an_order_with_partial_images() -> None:
    tok, gen = build("tiny-raster")
    with pytest.raises(ValueError, match="next-scale model"):
        Pipeline(tok, gen).sample([1], search="tts-var", reward=brightness, budget=2)


def test_cli_search(capsys, tmp_path) -> None:
    from arvision.cli import main

    out = tmp_path / "grid.png"
    assert main(["generate", "mnist-scale", "--classes", "3", "-n", "2", "--search", "tts-var", "--budget", "2", "-o", str(out)]) == 0
    assert out.is_file() and "12.0 candidate passes/image, mean reward" in capsys.readouterr().out
    assert main(["generate", "mnist-scale", "--classes", "3", "-n", "1", "--budget", "2", "-o", str(out)]) == 2
    assert "need --search" in capsys.readouterr().err
    assert main(["generate", "mnist-scale", "--classes", "3", "-n", "1", "--search", "best-of-n", "--budget", "2",
                 "--potential", "max", "-o", str(out)]) == 2  # fmt: skip
    assert "--potential is a tts-var option" in capsys.readouterr().err
