"""Linear-probe evaluation as in the CLIP paper: L2-regularised logistic regression on frozen image features.

The protocol: fit multinomial logistic regression with L-BFGS on the train split's features, choosing the inverse
regularisation strength C on a validation split carved from train, refit on train + validation at that C, and
report test accuracy. The paper sweeps C on a fine log grid over 1e-6..1e6 (its appendix A.3); here a grid every
two decades over that range and a bisection around its best reach a quarter of a decade in 13 fits. The objective
is scikit-learn's, `0.5 |W|^2 + C * sum(cross-entropy)` with the bias unpenalised, so C means what it means there;
it is minimised by torch.optim.LBFGS in float64 on the CPU, the grid's fits each warm-started from the one before.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ProbeConfig:
    cs: tuple[float, ...] = tuple(10.0**e for e in range(-6, 7, 2))  # the paper's range, 1e-6..1e6
    refine: tuple[float, ...] = (1.0, 0.5, 0.25)  # then best * 10**(+-step) for each step: a log-scale bisection
    val_fraction: float = 0.2  # of each class's training images, held out to choose C
    max_iter: int = 1000  # L-BFGS iterations per fit, as the paper's scikit-learn setting
    tol: float = 1e-4  # stop when no gradient entry of the mean loss exceeds this: scikit-learn's default
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cs", tuple(sorted(self.cs)))
        if not self.cs or min(self.cs) <= 0 or not 0 < self.val_fraction < 1 or self.max_iter < 1 or self.tol <= 0:
            raise ValueError(f"need positive Cs and tol, 0 < val_fraction < 1 and max_iter >= 1 ({self})")


@dataclass(frozen=True)
class LogisticModel:
    weight: torch.Tensor  # (D, K) float64
    bias: torch.Tensor  # (K,) float64

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() @ self.weight + self.bias).argmax(dim=1)  # (N,)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    c: float,
    max_iter: int = 1000,
    init: LogisticModel | None = None,
    tol: float = 1e-4,
) -> LogisticModel:
    """Minimise 0.5 |W|^2 + c * sum_i CE(x_i W + b, y_i) over (W, b) with L-BFGS, until every entry of the
    gradient of that objective divided by c * N is at most `tol` (scikit-learn's criterion) or `max_iter`."""
    x, y = x.double(), y.long()  # (N, D), (N,)
    n, d = x.shape
    weight = (init.weight.clone() if init else torch.zeros(d, num_classes, dtype=torch.float64)).requires_grad_()
    bias = (init.bias.clone() if init else torch.zeros(num_classes, dtype=torch.float64)).requires_grad_()
    # The change tolerance is far below the gradient's, so it is the gradient that ends a fit.
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")  # fmt: skip
    penalty = 1.0 / (2.0 * c * n)  # the objective divided by c * n: same minimiser, a loss of ordinary scale

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LogisticModel(weight.detach(), bias.detach())


def stratified_split(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: about `fraction` of each class's rows to validation, rounded, at least one when
    the class has two or more rows, and never the class's last row (every class stays learnable)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        k = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if len(rows) > 1 else 0
        val.append(rows[:k])
        train.append(rows[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _accuracy(model: LogisticModel, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x) == y).double().mean()) if len(y) else 0.0


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int | None = None,
    cfg: ProbeConfig = ProbeConfig(),
) -> dict[str, Any]:
    """The paper's protocol on features (N, D) and labels (N,): C chosen on validation, test accuracy at it."""
    train_y, test_y = torch.as_tensor(train_y).long(), torch.as_tensor(test_y).long()
    k = num_classes or int(max(train_y.max(), test_y.max())) + 1
    fit_rows, val_rows = map(torch.from_numpy, stratified_split(train_y.numpy(), cfg.val_fraction, cfg.seed))
    if len(val_rows) == 0:
        raise ValueError("the linear probe needs two or more training images of some class to choose C on")
    xf, yf, xv, yv = train_x[fit_rows], train_y[fit_rows], train_x[val_rows], train_y[val_rows]
    sweep: dict[float, float] = {}
    model = None
    for c in cfg.cs:  # ascending: each fit starts from the more regularised solution before it
        model = fit_logistic(xf, yf, k, c, cfg.max_iter, model, cfg.tol)
        sweep[c] = _accuracy(model, xv, yv)
    best = max(sweep, key=lambda c: (sweep[c], -c))  # ties: the stronger regularisation
    for step in cfg.refine:
        for c in (best * 10**-step, best * 10**step):
            if c not in sweep:
                sweep[c] = _accuracy(fit_logistic(xf, yf, k, c, cfg.max_iter, tol=cfg.tol), xv, yv)
        best = max((best, best * 10**-step, best * 10**step), key=lambda c: (sweep[c], -c))
    final = fit_logistic(train_x, train_y, k, best, cfg.max_iter, tol=cfg.tol)
    return {
        "train_images": len(train_y),
        "test_images": len(test_y),
        "classes": k,
        "C": best,
        "val_accuracy": sweep[best],
        "train_accuracy": _accuracy(final, train_x, train_y),
        "top1": _accuracy(final, test_x, test_y),
        "sweep": [{"C": c, "val_accuracy": a} for c, a in sorted(sweep.items())],
    }
