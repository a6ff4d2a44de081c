"""Linear probe: the fit is the regularised optimum, separable features are learnt, random labels are not."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipmodel.eval.linear_probe import ProbeConfig, fit_logistic, linear_probe, stratified_split

QUICK = ProbeConfig(cs=(1e-3, 1e-1, 10.0, 1e3), refine=(0.5,), max_iter=200)


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(per_class: int, classes: int, dim: int, seed: int, spread: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.eye(classes, dim)  # (K, D)
    y = torch.arange(classes).repeat_interleave(per_class)  # (N,)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_fit_is_the_regularised_optimum() -> None:
    x, y = blobs(20, 3, 5, seed=0, spread=2.0)  # overlapping: a finite optimum well inside the iteration budget
    c = 0.5
    fit = fit_logistic(x, y, 3, c, tol=1e-9)
    w, b = fit.weight.clone().requires_grad_(), fit.bias.clone().requires_grad_()
    # scikit-learn's objective: its gradient vanishes at the solution (tol bounds it divided by c * N = 30).
    objective = 0.5 * w.pow(2).sum() + c * F.cross_entropy(x.double() @ w + b, y, reduction="sum")
    objective.backward()
    assert w.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5  # W itself is of order 0.5


def test_separable_features_are_learnt() -> None:
    train_x, train_y = blobs(20, 4, 8, seed=1)
    test_x, test_y = blobs(10, 4, 8, seed=2)
    r = linear_probe(train_x, train_y, test_x, test_y, cfg=QUICK)
    assert r["top1"] == 1.0 and r["val_accuracy"] == 1.0 and r["classes"] == 4
    assert (r["train_images"], r["test_images"]) == (80, 40)
    assert len(r["sweep"]) == len(QUICK.cs) + 2 and r["C"] in [s["C"] for s in r["sweep"]]


def test_random_labels_stay_near_chance() -> None:
    g = torch.Generator().manual_seed(3)
    train_x, test_x = torch.randn(200, 16, generator=g), torch.randn(400, 16, generator=g)
    train_y, test_y = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (400,), generator=g)
    r = linear_probe(train_x, train_y, test_x, test_y, num_classes=4, cfg=QUICK)
    assert r["top1"] < 0.4  # chance is 0.25; 0.4 is six standard errors above it with 400 test images


def test_stratified_split_keeps_every_class_in_train() -> None:
    y = np.array([0] * 10 + [1] * 3 + [2])
    train, val = stratified_split(y, 0.2, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(14))
    assert np.bincount(y[val], minlength=3).tolist() == [2, 1, 0]  # 20% of 10; at least one of 3; none of 1
    assert set(y[train]) == {0, 1, 2}


def test_too_few_images_to_choose_c() -> None:
    x, y = blobs(1, 3, 4, seed=0)
    with pytest.raises(ValueError, match="two or more"):
        linear_probe(x, y, x, y, cfg=QUICK)
