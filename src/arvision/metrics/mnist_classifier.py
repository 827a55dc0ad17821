"""A small MNIST classifier: the cheap domain metric for generated digits.

Its predictions give the *class accuracy* of class-conditional samples (did the model draw the
digit it was asked for?), and its penultimate features can serve an MNIST-FID. It is trained by
the project (``python -m arvision.metrics.mnist_classifier --out DIR``) and shipped as
``mnist-classifier``.

Inputs are (B, 1, 28, 28) in [-1, 1]; (B, 3, H, W) is averaged to grey and other sizes are resized
bilinearly to 28x28.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from arvision.config import Config
from arvision.modeling import PretrainedModel, register_model


@dataclass(frozen=True, kw_only=True)
class MnistClassifierConfig(Config):
    channels: int = 16
    feature_dim: int = 128
    dropout: float = 0.1


@register_model
class MnistClassifier(PretrainedModel):
    """conv-conv-pool-conv-conv-pool-linear(features)-linear(10)."""

    model_type = "mnist_classifier"
    config_class = MnistClassifierConfig
    config: MnistClassifierConfig

    def __init__(self, config: MnistClassifierConfig) -> None:
        super().__init__(config)
        c = config.channels

        def conv(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.body = nn.Sequential(conv(1, c), conv(c, c), nn.MaxPool2d(2), conv(c, 2 * c), conv(2 * c, 2 * c), nn.MaxPool2d(2))
        self.fc = nn.Linear(2 * c * 7 * 7, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.feature_dim, 10)

    def _prepare(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"the MNIST classifier takes (B, 1 or 3, H, W) images in [-1, 1], got {tuple(x.shape)}")
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        return x.to(self.out.weight.device, self.out.weight.dtype)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (B, feature_dim)."""
        return F.relu(self.fc(self.body(self._prepare(x)).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, 10)."""
        return self.out(self.dropout(self.features(x)))

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 500) -> Tensor:
        """Predicted digits (B,) for images in [-1, 1]."""
        was = self.training
        self.eval()
        out = torch.cat([self(x[i : i + batch_size]).argmax(1).cpu() for i in range(0, len(x), batch_size)])
        self.train(was)
        return out


def class_accuracy(classifier: MnistClassifier, images_01: Tensor, labels: Tensor) -> float:
    """Share of ``images_01`` (in [0, 1], as pipelines return them) classified as their ``labels``."""
    return (classifier.predict(images_01 * 2 - 1) == labels.cpu()).float().mean().item()


def train_mnist_classifier(out_dir: str | Path, *, epochs: int = 3, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                           progress: bool = True, limit: int | None = None) -> dict:  # fmt: skip
    """Train on MNIST train (random +-2 px shifts), evaluate on MNIST test, save to ``out_dir``."""
    from arvision.data import MnistDataset

    torch.manual_seed(seed)
    train, test = MnistDataset("train", limit=limit), MnistDataset("test")
    model = MnistClassifier(MnistClassifierConfig())
    steps = epochs * (len(train) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    bar = tqdm(total=steps, desc="train classifier", disable=not progress)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        for i in range(len(train) // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = F.pad(train.images[idx], (2, 2, 2, 2), value=-1.0)
            dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
            x = x[:, :, dy : dy + 28, dx : dx + 28]
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    seconds = time.time() - t0
    accuracy = (model.predict(test.images) == test.labels).float().mean().item()
    metrics = {"test_accuracy": round(accuracy, 4)}
    model.save_pretrained(out_dir, info={
        "description": "MNIST digit classifier (small CNN): class accuracy of generated digits, features for MNIST-FID",
        "training": {"command": f"python -m arvision.metrics.mnist_classifier --out {out_dir} --epochs {epochs}",
                     "data": "mnist", "epochs": epochs, "batch_size": batch_size, "seconds": round(seconds, 1)},
        "metrics": metrics, "eval_data": "MNIST test split (10,000 images)",
    })  # fmt: skip
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the MNIST classifier used for class accuracy.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    print(train_mnist_classifier(args.out, epochs=args.epochs))


if __name__ == "__main__":
    main()
