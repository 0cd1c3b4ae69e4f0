"""cnnlab.teach: gradients, torch.optim agreement, stopping rules, and the `optim` CLI."""

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from cnnlab import teach
from cnnlab.errors import UserError

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------------------- gradients and minima


@pytest.mark.parametrize("name", list(teach.FUNCTIONS))
def test_gradient_matches_central_differences(name):
    fn = teach.FUNCTIONS[name]
    x0, x1, y0, y1 = fn.box
    rng = np.random.default_rng(0)
    # f2 is only differentiable for x > 0; stay clear of the sqrt's steep part near 0.
    xs = rng.uniform(max(x0, 0.3) if fn.domain else x0, x1, 20)
    ys = rng.uniform(y0, y1, 20)
    h = 1e-6
    for x, y in zip(xs, ys, strict=True):
        gx, gy = fn.grad(x, y)
        nx = (fn.value(x + h, y) - fn.value(x - h, y)) / (2 * h)
        ny = (fn.value(x, y + h) - fn.value(x, y - h)) / (2 * h)
        scale = 1 + abs(gx) + abs(gy)
        assert abs(gx - nx) < 1e-6 * scale and abs(gy - ny) < 1e-6 * scale, (x, y)


@pytest.mark.parametrize("name", list(teach.FUNCTIONS))
def test_recorded_minima(name):
    fn = teach.FUNCTIONS[name]
    for m in fn.minima:
        assert np.allclose(fn.grad(*m), 0, atol=1e-9)
        assert fn.value(*m) == pytest.approx(fn.f_min, abs=1e-12)
        # A minimum, not a saddle: nothing lower on a small ring around it.
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        ring = np.array(m)[:, None] + 1e-3 * np.array([np.cos(angles), np.sin(angles)])
        assert np.all(fn.value(*ring) > fn.f_min)


def test_f2_minimum_is_lowest_in_the_explored_region():
    fn = teach.FUNCTIONS["f2"]
    X, Y = np.meshgrid(np.linspace(0.01, 10, 600), np.linspace(-3, 10, 600))
    assert fn.value(X, Y).min() >= fn.f_min - 1e-9
    assert fn.f_min == pytest.approx(0.9177156347, abs=1e-9)


# ---------------------------------------------------------------------------- against torch.optim

_TORCH_FUNCTIONS = {
    "f1": lambda p: 5 * p[0] ** 2 + p[1] ** 2,
    "f2": lambda p: (p[0] - 3) ** 2 + 8 * (p[1] - 5) ** 4 + torch.sqrt(p[0]) + torch.sin(p[0] * p[1]),
    "rosenbrock": lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2,
}


def _torch_optimizer(name, params, p):
    """torch.optim configured to our update rule (the conventions in teach's docstring)."""
    lr = p["lr"]
    build = {
        "sgd": lambda: torch.optim.SGD(params, lr=lr),
        "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=p["mu"]),
        "nesterov": lambda: torch.optim.SGD(params, lr=lr, momentum=p["mu"], nesterov=True),
        "adagrad": lambda: torch.optim.Adagrad(params, lr=lr, eps=p["eps"], initial_accumulator_value=0, lr_decay=0),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, alpha=p["mu"], eps=p["eps"]),
        "adam": lambda: torch.optim.Adam(params, lr=lr, betas=(p["beta"], p["mu"]), eps=p["eps"]),
    }
    return build[name]()


def _torch_run(optimizer, function, x0, n_iter, p, follow=None):
    """torch.optim's trajectory; with `follow` (our points), each step starts from our point instead,
    so only one step's rounding separates the two (torch keeps its own optimizer state)."""
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = _torch_optimizer(optimizer, [x], p)
    points = [x.detach().clone()]
    for t in range(n_iter):
        if follow is not None:
            with torch.no_grad():
                x.copy_(torch.from_numpy(follow[t]))
        opt.zero_grad()
        _TORCH_FUNCTIONS[function](x).backward()  # autograd: also cross-checks our gradients
        opt.step()
        points.append(x.detach().clone())
    return torch.stack(points).numpy()


def test_adam_equals_torch_exactly_as_specified():
    ours = teach.run("adam", "f1", x0=(5, 5), n_iter=100, lr=0.1, beta=0.9, mu=0.9, eps=1e-6)
    theirs = _torch_run("adam", "f1", (5.0, 5.0), 100, {"lr": 0.1, "beta": 0.9, "mu": 0.9, "eps": 1e-6})
    assert ours.shape == (101, 2)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-8)


def _aligned(optimizer):
    return {"eps_inside": False} if "eps" in teach.UPDATE_RULES[optimizer].params else {}


@pytest.mark.parametrize("function", list(_TORCH_FUNCTIONS))
@pytest.mark.parametrize("optimizer", list(teach.UPDATE_RULES))
def test_equals_torch_with_conventions_aligned(optimizer, function):
    fn = teach.FUNCTIONS[function]
    tr = teach.trajectory(optimizer, function, None, 100, **_aligned(optimizer))
    assert tr.status == "ok" and tr.n_steps == 100
    # Step by step from the same points: the update rules agree to rounding.
    stepwise = _torch_run(optimizer, function, fn.start, 100, tr.params, follow=tr.points)
    np.testing.assert_allclose(tr.points, stepwise, rtol=0, atol=1e-12)
    # Free-running: the whole trajectories agree too, except rmsprop on f2, which from about step 60
    # bounces between f2's sin(xy) wells and multiplies the 1e-16 rounding differences by ~4 a step.
    theirs = _torch_run(optimizer, function, fn.start, 100, tr.params)
    n = 60 if (optimizer, function) == ("rmsprop", "f2") else 101
    np.testing.assert_allclose(tr.points[:n], theirs[:n], rtol=0, atol=1e-8)


@pytest.mark.parametrize("optimizer", ["adagrad", "rmsprop"])
def test_eps_inside_the_root_is_a_documented_small_difference(optimizer):
    # The assignment's sqrt(G + eps) vs torch's sqrt(G) + eps: same picture, not the same numbers.
    ours = teach.run(optimizer, "f1", n_iter=100)
    p = teach.settings(optimizer, "f1")
    theirs = _torch_run(optimizer, "f1", (5.0, 5.0), 100, p)
    diff = np.abs(ours - theirs).max()
    assert 1e-8 < diff < 1e-3


# ---------------------------------------------------------------------------- stopping rules


def test_f2_leaving_the_domain_stops_before_the_bad_step():
    # From (0.05, 5) the x-gradient is positive, so one sgd step of 0.1 lands at x < 0.
    tr = teach.trajectory("sgd", "f2", x0=(0.05, 5.0), n_iter=50, lr=0.1)
    assert tr.status == "left domain" and tr.n_steps == 0
    assert tr.rejected[0] < 0 and "x > 0" in tr.message
    assert np.all(np.isfinite(tr.values))
    with pytest.warns(RuntimeWarning, match="left domain"):
        pts = teach.run("sgd", "f2", x0=(0.05, 5.0), n_iter=50, lr=0.1)
    assert pts.shape == (1, 2)


def test_divergence_is_detected():
    # x_{t+1} = (1 - 10 lr) x_t = -2 x_t: |x| passes the divergence radius after ~18 steps.
    tr = teach.trajectory("sgd", "f1", n_iter=100, lr=0.3)
    assert tr.status == "diverged" and 10 < tr.n_steps < 30
    assert np.all(np.isfinite(tr.points)) and np.all(np.isfinite(tr.values))
    s = teach.summarize_trajectory(tr)
    assert s["status"] == "diverged" and s["iters_to_tol"] is None


def test_assignment_settings_run_to_the_end():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in ("f1", "f2"):
            for name in teach.ASSIGNMENT_OPTIMIZERS:
                assert teach.run(name, fn).shape == (101, 2)


def test_custom_function_object():
    class Bowl:
        def value(self, x, y):
            return (x - 1) ** 2 + (y + 2) ** 2

        def grad(self, x, y):
            return 2 * (x - 1), 2 * (y + 2)

    pts = teach.run("sgd", Bowl(), x0=(0, 0), n_iter=200, lr=0.1)
    assert np.allclose(pts[-1], (1, -2))


def test_user_errors():
    with pytest.raises(UserError, match="did you mean 'adam'"):
        teach.run("adan", "f1")
    with pytest.raises(UserError, match="unknown function"):
        teach.run("sgd", "f3")
    with pytest.raises(UserError, match="sgd takes lr"):
        teach.run("sgd", "f1", mu=0.9)
    with pytest.raises(UserError, match="outside the domain"):
        teach.run("sgd", "f2", x0=(-1, 0))
    with pytest.raises(UserError):
        teach.parse_lr_grid("0.1,-1")
    assert teach.parse_lr_grid("1e-3:1e-1:3") == pytest.approx([1e-3, 1e-2, 1e-1])


def test_lr_search_picks_the_fastest():
    best = teach.best_lr("sgd", "f1", [0.001, 0.05, 0.3], n_iter=100)
    assert best["params"]["lr"] == 0.05 and best["iters_to_tol"] is not None
    assert [g["status"] for g in best["grid"]] == ["ok", "ok", "diverged"]


# ---------------------------------------------------------------------------- CLI


def _cli(*args):
    from cnnlab.cli.main import main

    return CliRunner().invoke(main, ["optim", *args])


def test_cli_animate_writes_gifs_and_pngs(tmp_path):
    res = _cli(
        "animate", "-f", "f1", "-o", "sgd,adam", "--iters", "8", "--frames", "4", "--dpi", "30", "--out", str(tmp_path)
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f1-adam.gif", "f1-paths.png", "f1-sgd.gif", "gaps.png"]
    from PIL import Image

    with Image.open(tmp_path / "f1-adam.gif") as im:
        assert im.n_frames >= 4


def test_cli_compare_json():
    res = _cli("compare", "--json", "-f", "f1,f2", "-o", "sgd", "-o", "adam", "--lr", "adam=0.01,0.1")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["function"], r["optimizer"]) for r in rows] == [
        ("f1", "sgd"),
        ("f1", "adam"),
        ("f2", "sgd"),
        ("f2", "adam"),
    ]
    assert "grid" in rows[1] and "grid" not in rows[0]


def test_cli_compare_table():
    res = _cli("compare", "-f", "f1")
    assert res.exit_code == 0 and "iters to tol" in res.output and "rmsprop" in res.output


@pytest.mark.parametrize(
    "args",
    [
        ("compare", "-o", "adamw"),
        ("animate", "-f", "f9"),
        ("compare", "--lr", "fast"),
        ("compare", "--lr", "nesterov=0.1"),
    ],
)
def test_cli_user_error_is_one_line_exit_2(args):
    res = _cli(*args)
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("error:")


def test_cli_default_optimizers_match_module():
    from cnnlab.cli import optim_cmds

    assert optim_cmds._ASSIGNMENT_OPTIMIZERS == teach.ASSIGNMENT_OPTIMIZERS
