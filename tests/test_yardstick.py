"""The yardstick's offline stand-in: every target can be ranked, and a copy of a target is identified."""

from __future__ import annotations

import torch

from gi_tutorial import data, yardstick


def test_offline_fashion_mnist_yardstick_ranks_every_target(monkeypatch, tmp_path):
    # a fresh machine: no Debian package, an empty data folder, only the 20 images of the foolbox wheel
    (tmp_path / "deb").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.setenv(data.DEBIAN_DIR_ENV, str(tmp_path / "deb"))
    monkeypatch.setenv("GI_TUTORIAL_DATA", str(tmp_path / "data"))
    images, labels = data.fashion_mnist("test", data.NUM_SHIPPED)
    targets, target_labels = images[:4], labels[:4]
    stick = yardstick.fashion_mnist(exclude=targets)
    assert "stand-in" in stick.description and len(stick.pool_images) == data.NUM_SHIPPED - 4
    # test image 0 is the only ankle boot of the 20: ranking within its class would have no candidate
    assert (labels == labels[0]).sum() == 1
    exact = stick.identify(targets, targets, target_labels)
    assert exact.identified.all(), "an exact copy of each target must rank first"
    flipped = stick.identify(targets.flip(0), targets, target_labels)
    assert not flipped.identified.all(), "another target's image must not count as identified"
    assert torch.equal(stick.pool_labels, labels[4:])
