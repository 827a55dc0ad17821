"""The training curve of a generator: MNIST-FID and class accuracy against training steps.

``arvision train generator --eval-every N`` samples ``--eval-samples`` class-balanced images every
N steps (and at the last step) with the weights that would be saved at that step (the EMA weights
when EMA is on) and scores them with the MNIST classifier's features against the MNIST test set,
the same metric as ``arvision eval generator``'s default. Each point's samples are written as the
chunks of an ordinary evaluation run (``OUT/curve/step_NNNNNN``), so a run killed during an
evaluation picks it up where it stopped; the points themselves live in the run record of the
checkpoint, the final model card (``training.curve``) and ``OUT/curve.json`` / ``OUT/curve.png``.

Evaluating does not disturb training: sampling uses its own per-image random streams, the global
random state is restored afterwards, and the model goes back to training mode, so a run with a
curve trains to the same weights as one without.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from arvision.outputs import write_json
from arvision.plots import line_plot

CURVE_DIR = "curve"


def check_curve_data(image_size: int, channels: int) -> None:
    """The curve's metric needs MNIST-sized images: a clear error before any training."""
    if (image_size, channels) != (28, 1):
        raise ValueError(f"--eval-every measures MNIST-FID (MNIST classifier features, MNIST test set as reference) and "
                         f"needs a 28x28 grayscale tokenizer, this one makes {channels}x{image_size}x{image_size} images: "
                         "evaluate the saved model with arvision eval generator --features inception --ref REF instead")  # fmt: skip


class TrainingCurve:
    """Scores a generator during training; ``points`` is the list kept in the run record."""

    def __init__(self, out: Path, points: list[dict[str, Any]], *, n: int, progress: bool) -> None:
        from arvision.metrics.features import get_feature_extractor, load_reference

        self.out, self.points, self.n, self.progress = out, points, n, progress
        self.extractor = get_feature_extractor("mnist")
        self.reference = load_reference("mnist:test", self.extractor, channels=1, image_size=28, progress=progress)

    def measure(self, step: int, tokenizer, generator: torch.nn.Module) -> dict[str, Any]:
        """Add (or return the recorded) point of ``step``, scored with ``generator`` as it is now."""
        from arvision.evaluate import evaluate_generator
        from arvision.pipeline import Pipeline

        done = next((p for p in self.points if p["step"] == step), None)
        if done is not None:
            return done
        was_training = generator.training
        t0 = time.time()
        with torch.random.fork_rng(devices=[]):  # the global random state is the training's, untouched
            try:
                rep = evaluate_generator(Pipeline(tokenizer, generator.eval()), self.extractor, self.reference, n=self.n,
                                         out_dir=self.out / CURVE_DIR / f"step_{step:06d}", batch_size=min(500, self.n),
                                         progress=False, model=f"step {step}", overwrite=True)  # fmt: skip
            finally:
                generator.train(was_training)
        point = {"step": step, "fid": round(rep["fid"], 3), "class_accuracy": round(rep["class_accuracy"], 4),
                 "samples": rep["num_samples"], "seconds": round(time.time() - t0, 1)}  # fmt: skip
        self.points.append(point)
        self.points.sort(key=lambda p: p["step"])
        self.save()
        after_bar = "\n" if self.progress else ""  # one line per point, also with --no-progress (a log of the run)
        print(f"{after_bar}step {step}: MNIST-FID {point['fid']:.2f}, class accuracy {100 * point['class_accuracy']:.2f} % "
              f"({point['samples']} samples, {point['seconds']:.0f} s)", flush=True)  # fmt: skip
        return point

    def save(self) -> None:
        """``curve.json`` and ``curve.png`` (FID against steps) in the run directory."""
        write_json(self.out / "curve.json", {"metric": "MNIST-FID vs mnist:test", "samples": self.n, "points": self.points})
        if len(self.points) >= 2:
            line_plot({"MNIST-FID": [(p["step"], p["fid"]) for p in self.points]}, self.out / "curve.png",
                      title=f"{self.out.name}: MNIST-FID ({self.n} samples) during training", xlabel="training step")
