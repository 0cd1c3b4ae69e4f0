"""Optimizers from scratch on 2-D test functions: SGD, momentum, Nesterov, Adagrad, RMSProp and Adam
(`UPDATE_RULES`), run to a `Trajectory` (`trajectory`, `run`), summarized, compared and tuned (`compare`,
`best_lr`); pure numpy.

Update rules (the assignment's, `x` the point, `g` the gradient at `x`, `t` the step from 1):

    sgd       x -= lr*g
    momentum  v = mu*v - lr*g;  x += v
    nesterov  v = mu*v - lr*g;  x += mu*v - lr*g
    adagrad   G += g*g;                     x -= lr*g/sqrt(G + eps)
    rmsprop   G = mu*G + (1-mu)*g*g;        x -= lr*g/sqrt(G + eps)
    adam      m = beta*m + (1-beta)*g;  v = mu*v + (1-mu)*g*g;
              x -= lr*m_hat/(sqrt(v_hat) + eps),  m_hat = m/(1-beta^t),  v_hat = v/(1-mu^t)

How these line up with `torch.optim` (tested in tests/teach/test_teach.py, float64, to 1e-8):

- eps: the assignment's formulas put eps inside the square root for Adagrad and RMSProp and outside
  for Adam; torch adds it outside (`sqrt(G) + eps`) in all three. `eps_inside` chooses (default: the
  assignment's). With `eps_inside=False` Adagrad and RMSProp equal torch's; with the default they
  differ by about eps/(2 sqrt(G)) relative per step: invisible in the pictures, above 1e-8 over 100
  steps. Adam's default already is torch's convention.
- momentum: torch keeps `b = mu*b + g; x -= lr*b`, i.e. `v = -lr*b`. For a constant lr both give
  the same points (torch's `dampening=0`, first buffer = g, matches `v0 = 0`).
- nesterov: written in the "look-ahead variable" form (Bengio et al. 2012), which needs only the
  gradient at the current point; it is what `torch.optim.SGD(nesterov=True)` does.
- adagrad: torch's `initial_accumulator_value=0` and `lr_decay=0` are this rule.
- rmsprop: torch's `alpha` is `mu` (with `momentum=0, centered=False`).
- adam: torch's `betas=(beta, mu)`; bias correction as above (the assignment's own solution computed
  the corrected moments and then stepped with the uncorrected ones; this one does not).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cnnlab.errors import UserError, nearest
from cnnlab.teach.functions import DIVERGENCE_RADIUS, _attr, get_function

# ----------------------------------------------------------------------------------------------
# Optimizers: each step function maps (x, g, state, t, p) to the next x, keeping its memory in
# `state` (a dict, empty at t = 1) and reading hyper-parameters from the dict `p`.
# ----------------------------------------------------------------------------------------------


def _sgd(x, g, state, t, p):
    return x - p["lr"] * g


def _momentum(x, g, state, t, p):
    state["v"] = p["mu"] * state.get("v", 0.0) - p["lr"] * g
    return x + state["v"]


def _nesterov(x, g, state, t, p):
    state["v"] = p["mu"] * state.get("v", 0.0) - p["lr"] * g
    return x + p["mu"] * state["v"] - p["lr"] * g


def _scale(acc, p):
    # The assignment puts eps under the root; torch adds it after (see the module docstring).
    return np.sqrt(acc + p["eps"]) if p["eps_inside"] else np.sqrt(acc) + p["eps"]


def _adagrad(x, g, state, t, p):
    state["G"] = state.get("G", 0.0) + g * g
    return x - p["lr"] * g / _scale(state["G"], p)


def _rmsprop(x, g, state, t, p):
    state["G"] = p["mu"] * state.get("G", 0.0) + (1 - p["mu"]) * g * g
    return x - p["lr"] * g / _scale(state["G"], p)


def _adam(x, g, state, t, p):
    state["m"] = p["beta"] * state.get("m", 0.0) + (1 - p["beta"]) * g
    state["v"] = p["mu"] * state.get("v", 0.0) + (1 - p["mu"]) * g * g
    # Both moments start at 0, so early on they are biased towards 0; dividing by 1 - beta^t undoes it.
    m_hat = state["m"] / (1 - p["beta"] ** t)
    v_hat = state["v"] / (1 - p["mu"] ** t)
    return x - p["lr"] * m_hat / _scale(v_hat, p)


@dataclass(frozen=True)
class Optimizer:
    """One update rule by name: `step(x, g, state, t, params) -> x`, the hyper-parameters it reads, and where its
    formula puts eps by default."""

    name: str
    step: Callable
    params: tuple[str, ...]  # hyper-parameters it reads; others are refused
    eps_inside: bool = True  # where the assignment's formula puts eps (only read if "eps" in params)


_ADAPTIVE = ("lr", "eps", "eps_inside")
UPDATE_RULES: dict[str, Optimizer] = {
    o.name: o
    for o in (
        Optimizer("sgd", _sgd, ("lr",)),
        Optimizer("momentum", _momentum, ("lr", "mu")),
        Optimizer("nesterov", _nesterov, ("lr", "mu")),
        Optimizer("adagrad", _adagrad, _ADAPTIVE),
        Optimizer("rmsprop", _rmsprop, (*_ADAPTIVE, "mu")),
        Optimizer("adam", _adam, (*_ADAPTIVE, "beta", "mu"), eps_inside=False),
    )
}
# The five the assignment asks for; nesterov is an extra.
ASSIGNMENT_OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")


def get_optimizer(name: str) -> Optimizer:
    """The update rule named `name` (UPDATE_RULES); a UserError with a "did you mean" for an unknown name."""
    if name not in UPDATE_RULES:
        raise nearest(name, UPDATE_RULES, "optimizer")
    return UPDATE_RULES[name]


def settings(optimizer: str, function="f1") -> dict:
    """The assignment's hyper-parameters for this optimizer on this function.

    sgd/momentum/nesterov take the function's SGD step size (the assignment gives momentum only a
    mu, so it shares SGD's lr: 0.01 on f1, 0.0002 on f2) and its momentum mu (0.9 on f1, 0.7 on f2).
    The adaptive ones take lr 0.1, eps 1e-6, mu = beta = 0.9 everywhere, eps where the assignment's
    formula has it (inside the root for adagrad and rmsprop, outside for adam).
    """
    opt, fn = get_optimizer(optimizer), get_function(function)
    adaptive = "eps" in opt.params
    base = {
        "lr": 0.1 if adaptive else _attr(fn, "sgd_lr", 0.01),
        "mu": 0.9 if adaptive else _attr(fn, "momentum_mu", 0.9),
        "beta": 0.9,
        "eps": 1e-6,
        "eps_inside": opt.eps_inside,
    }
    return {k: base[k] for k in opt.params}


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """The points visited, and why the run ended.

    `points` has n_steps + 1 rows (start first), all finite and inside the domain. `status` is "ok",
    "diverged" or "left domain"; for the last two `rejected` is the step that was refused.
    """

    optimizer: str
    function: object
    params: dict
    points: np.ndarray
    n_iter: int
    status: str = "ok"
    message: str = ""
    rejected: np.ndarray | None = None
    values: np.ndarray = field(init=False)

    def __post_init__(self):
        fn = self.function
        self.values = np.asarray(fn.value(self.points[:, 0], self.points[:, 1]), dtype=float)

    @property
    def n_steps(self) -> int:
        return len(self.points) - 1

    @property
    def stopped(self) -> bool:
        return self.status != "ok"


def trajectory(optimizer: str, function="f1", x0=None, n_iter: int = 100, **params) -> Trajectory:
    """Run `optimizer` on `function` from `x0` (default: the function's start) for `n_iter` steps.

    Parameters not given take `settings(optimizer, function)`. A step that leaves the domain or
    diverges (non-finite, or beyond DIVERGENCE_RADIUS) is not taken: the run stops before it.
    """
    opt, fn = get_optimizer(optimizer), get_function(function)
    unknown = sorted(set(params) - set(opt.params))
    if unknown:
        raise UserError(f"{optimizer} takes {', '.join(opt.params)}; not {', '.join(unknown)}")
    p = {**settings(optimizer, fn), **params}
    if n_iter < 0:
        raise UserError(f"n_iter must be >= 0, got {n_iter}")

    try:
        x = np.array(_attr(fn, "start") if x0 is None else x0, dtype=np.float64).reshape(2)
    except (TypeError, ValueError):
        raise UserError(f"a start point is two numbers (x, y), got {x0!r}") from None
    domain = _attr(fn, "domain")
    if not np.all(np.isfinite(x)) or (domain is not None and not domain(*x)):
        raise UserError(f"start point {tuple(x)} is outside the domain of {_name(fn)}")

    points, state, status, message, rejected = [x], {}, "ok", "", None
    for t in range(1, n_iter + 1):
        g = np.array(fn.grad(*x), dtype=np.float64)
        new = opt.step(x, g, state, t, p) if np.all(np.isfinite(g)) else np.full(2, np.inf)
        if not np.all(np.isfinite(new)) or np.abs(new).max() > DIVERGENCE_RADIUS:
            status = "diverged"
        elif domain is not None and not domain(*new):
            status = "left domain"
        if status != "ok":
            rejected = new
            where = f" ({_attr(fn, 'domain_text')})" if status == "left domain" else ""
            message = f"{optimizer} on {_name(fn)}: step {t} {status}{where}; stopped after {t - 1} steps"
            break
        points.append(new)
        x = new
    return Trajectory(optimizer, fn, p, np.array(points), n_iter, status, message, rejected)


def run(optimizer: str, function="f1", x0=None, n_iter: int = 100, **params) -> np.ndarray:
    """The points of `trajectory(...)`: shape (n_iter + 1, 2), start point first.

    When the run leaves the domain or diverges it stops there, returns fewer rows and warns
    (RuntimeWarning); `trajectory()` gives the reason without warning.
    """
    tr = trajectory(optimizer, function, x0, n_iter, **params)
    if tr.stopped:
        warnings.warn(tr.message, RuntimeWarning, stacklevel=2)
    return tr.points


def _name(fn) -> str:
    return _attr(fn, "name", type(fn).__name__)


def gap(tr: Trajectory) -> np.ndarray:
    """|f(x_t) - f*| for each point (NaN when the function does not know its minimum)."""
    f_min = _attr(tr.function, "f_min")
    return np.abs(tr.values - f_min) if f_min is not None else np.full(len(tr.values), np.nan)


def summarize_trajectory(tr: Trajectory, tol: float = 1e-3) -> dict:
    """Plain-dict summary: iterations to tol, final gap |f - f*| and distance to the nearest minimum.

    `iters_to_tol` is the first t from which |f(x_t) - f*| stays below `tol` to the end of the run
    (None if it never does, or the run was stopped): passing through the minimum is not converging.
    """
    gaps = gap(tr)
    above = np.flatnonzero(~(gaps < tol))  # NaN counts as above
    first_settled = above[-1] + 1 if above.size else 0
    minima = _attr(tr.function, "minima")
    dist = float(np.min(np.linalg.norm(np.asarray(minima) - tr.points[-1], axis=1))) if minima else None
    return {
        "function": _name(tr.function),
        "optimizer": tr.optimizer,
        "params": dict(tr.params),
        "n_iter": tr.n_iter,
        "steps": tr.n_steps,
        "iters_to_tol": int(first_settled) if first_settled < len(gaps) and not tr.stopped else None,
        "tol": tol,
        "final_point": [float(v) for v in tr.points[-1]],
        "final_value": float(tr.values[-1]),
        "final_gap": float(gaps[-1]),
        "final_distance": dist,
        "status": tr.status,
        "message": tr.message,
    }


def _rank(summary: dict):
    # Best first: reached tol soonest; then never-stopped runs by final gap; stopped runs last.
    reached = summary["iters_to_tol"] is not None
    return (
        not reached,
        summary["iters_to_tol"] if reached else 0,
        summary["status"] != "ok",
        summary["final_gap"] if math.isfinite(summary["final_gap"]) else math.inf,
    )


def best_lr(
    optimizer: str, function, grid: Iterable[float], n_iter: int = 100, tol: float = 1e-3, x0=None, **params
) -> dict:
    """Try every lr in `grid` and return the best run's summary, with the whole grid under "grid"."""
    grid = [float(v) for v in grid]
    if not grid or any(not math.isfinite(v) or v <= 0 for v in grid):
        raise UserError(f"an lr grid needs positive numbers, got {grid}")
    tried = [
        summarize_trajectory(trajectory(optimizer, function, x0, n_iter, **{**params, "lr": lr}), tol) for lr in grid
    ]
    best = dict(min(tried, key=_rank))
    best["grid"] = [
        {k: s[k] for k in ("iters_to_tol", "final_gap", "status")} | {"lr": s["params"]["lr"]} for s in tried
    ]
    return best


def compare(
    functions: Sequence = ("f1", "f2"),
    optimizers: Sequence[str] = ASSIGNMENT_OPTIMIZERS,
    n_iter: int = 100,
    tol: float = 1e-3,
    lr_grid: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
) -> list[dict]:
    """One summary dict per (function, optimizer), in that order.

    Without `lr_grid` each run uses the assignment's settings. With a list, every optimizer's lr is
    searched over it; with a dict {optimizer: list}, only the optimizers named there are searched.
    """
    rows = []
    for fn in functions:
        for name in optimizers:
            grid = lr_grid.get(name) if isinstance(lr_grid, Mapping) else lr_grid
            if grid is None:
                rows.append(summarize_trajectory(trajectory(name, fn, None, n_iter), tol))
            else:
                rows.append(best_lr(name, fn, grid, n_iter, tol))
    return rows


def parse_lr_grid(text: str) -> list[float]:
    """'0.001,0.01,0.1' (a list) or '1e-4:1:9' (9 log-spaced values from 1e-4 to 1)."""
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            lo, hi, n = float(lo), float(hi), int(n)
            if lo <= 0 or hi <= 0 or n < 1:
                raise ValueError
            grid = [float(v) for v in np.geomspace(lo, hi, n)]
        else:
            grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad lr grid '{text}': use '0.001,0.01,0.1' or 'LOW:HIGH:COUNT'") from None
    if not grid or any(not math.isfinite(v) or v <= 0 for v in grid):
        raise UserError(f"bad lr grid '{text}': step sizes must be positive numbers")
    return grid
