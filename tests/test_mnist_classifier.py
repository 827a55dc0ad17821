"""The shipped MNIST classifier that scores generated digits."""

from __future__ import annotations

import pytest
import torch

import arvision
from arvision.data import MnistDataset
from arvision.metrics.mnist_classifier import MnistClassifier, MnistClassifierConfig, class_accuracy


def test_shapes_features_and_errors(tmp_path) -> None:
    model = MnistClassifier(MnistClassifierConfig()).eval()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert model(x).shape == (4, 10) and model.features(x).shape == (4, 128)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)  # RGB and other sizes are adapted
    with pytest.raises(ValueError, match=r"\(B, 1 or 3, H, W\)"):
        model(torch.rand(4, 28, 28))
    model.save_pretrained(tmp_path)
    assert torch.equal(MnistClassifier.from_pretrained(tmp_path)(x), model(x))


def test_shipped_classifier_is_accurate() -> None:
    clf = arvision.load("mnist-classifier")
    test = MnistDataset("test")
    assert clf.info["metrics"]["test_accuracy"] >= 0.99
    acc = class_accuracy(clf, (test.images[:2000] + 1) / 2, test.labels[:2000])
    assert acc >= 0.985
