"""`cnnlab optim`: the optimizers-from-scratch part (animations and a convergence comparison)."""

from __future__ import annotations

import json
import time

import click

from cnnlab.errors import UserError, nearest

# Kept in sync with cnnlab.teach.ASSIGNMENT_OPTIMIZERS by a test; repeated here so `--help` does not import numpy.
_ASSIGNMENT_OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")


def _split(values, registry, what):
    """Repeated and/or comma-separated names; 'all' means every registered one."""
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if "all" in names:
        return list(registry)
    for n in names:
        if n not in registry:
            raise nearest(n, registry, what)
    return list(dict.fromkeys(names))


def _lr_grids(values, optimizers):
    """`--lr GRID` for every optimizer, `--lr NAME=GRID` for one; None when no --lr was given."""
    from cnnlab import teach

    if not values:
        return None
    grids = {}
    for value in values:
        name, sep, grid = value.partition("=")
        if sep:
            name = name.strip()
            teach.get_optimizer(name)
            if name not in optimizers:
                raise UserError(f"--lr {value}: {name} is not among the optimizers run (add -o {name})")
            grids[name] = teach.parse_lr_grid(grid)
        else:
            grid = teach.parse_lr_grid(value)
            grids.update({n: grid for n in optimizers if n not in grids})
    return grids


_function_opt = click.option(
    "--function",
    "-f",
    "functions",
    multiple=True,
    default=("f1", "f2"),
    show_default=True,
    help="Function name(s): f1, f2, rosenbrock, beale, himmelblau, or 'all'. Repeat or comma-separate.",
)
_optimizer_opt = click.option(
    "--optimizer",
    "-o",
    "optimizers",
    multiple=True,
    default=_ASSIGNMENT_OPTIMIZERS,
    show_default=True,
    help="Optimizer name(s): sgd, momentum, nesterov, adagrad, rmsprop, adam, or 'all'.",
)
_iters_opt = click.option(
    "--iters", "n_iter", type=click.IntRange(1, 100_000), default=100, show_default=True, help="Iterations per run."
)
_tol_opt = click.option(
    "--tol",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Converged once |f - f*| < tol.",
)
_lr_opt = click.option(
    "--lr",
    "lr",
    multiple=True,
    metavar="[NAME=]GRID",
    help="Search the step size over GRID ('0.001,0.01,0.1' or 'LOW:HIGH:COUNT', log-spaced) and keep "
    "the best per function; NAME= limits it to one optimizer. Repeatable. "
    "Default: the assignment's settings.",
)


def _resolve(functions, optimizers, lr):
    from cnnlab import teach

    fns = _split(functions, teach.FUNCTIONS, "function")
    opts = _split(optimizers, teach.UPDATE_RULES, "optimizer")
    return fns, opts, _lr_grids(lr, opts)


@click.group()
def optim():
    """Optimizers written from scratch in numpy, run on 2-D test functions.

    SGD, momentum, Nesterov, Adagrad, RMSProp and Adam (bias-corrected), checked against
    torch.optim in the tests. Defaults are the assignment's settings: 100 iterations, f1 = 5x^2 + y^2
    from (5, 5), f2 = (x-3)^2 + 8(y-5)^4 + sqrt(x) + sin(xy) from (5, -2).

    \b
    Example:
      cnnlab optim animate --out optim-anim
      cnnlab optim compare
      cnnlab optim compare --lr 1e-4:1:13 --json
    """


@optim.command()
@_function_opt
@_optimizer_opt
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="optim-anim",
    show_default=True,
    help="Folder for the GIFs and PNGs (created).",
)
@_iters_opt
@_lr_opt
@_tol_opt
@click.option(
    "--frames",
    type=click.IntRange(2, 1000),
    default=40,
    show_default=True,
    help="GIF frames per run (steps are skipped evenly; the last frame shows the whole run).",
)
@click.option("--dpi", type=click.IntRange(20, 300), default=70, show_default=True, help="GIF resolution.")
def animate(functions, optimizers, out, n_iter, lr, tol, frames, dpi):
    """Animate each optimizer on each function over log-scaled contour lines.

    Writes FUNCTION-OPTIMIZER.gif per pair, FUNCTION-paths.png (all runs overlaid) per function and
    gaps.png (|f(x_t) - f*| against t, log scale). Runs that leave the domain or diverge stop there and
    say so in the pictures.

    \b
    Example:
      cnnlab optim animate --out optim-anim
      cnnlab optim animate -f rosenbrock -o adam,momentum --lr 1e-4:1:13 --out tuned
    """
    from cnnlab import teach
    from cnnlab.files import output_folder

    fns, opts, grids = _resolve(functions, optimizers, lr)
    output_folder(out)
    start = time.perf_counter()
    paths = teach.animate_all(out, fns, opts, n_iter=n_iter, lr_grid=grids, tol=tol, frames=frames, dpi=dpi)
    gifs = sum(p.suffix == ".gif" for p in paths)
    click.echo(f"wrote {gifs} GIFs and {len(paths) - gifs} PNGs to {out} in {time.perf_counter() - start:.1f} s")


@optim.command()
@_function_opt
@_optimizer_opt
@_iters_opt
@_lr_opt
@_tol_opt
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects) instead of a table.")
def compare(functions, optimizers, n_iter, lr, tol, as_json):
    """Compare convergence: iterations to tol, final |f - f*|, distance to the minimum, status.

    'iters to tol' is the first iteration from which |f - f*| stays below --tol. Status is 'ok',
    'diverged' or 'left domain' (the run stopped before the bad step). With --lr, each optimizer's
    best step size on each function is found: fewest iterations to tol, else the smallest final gap.

    \b
    Example:
      cnnlab optim compare
      cnnlab optim compare -f all -o all --lr 1e-5:1:16
      cnnlab optim compare --lr sgd=1e-4,1e-3,1e-2 --json
    """
    from cnnlab import teach

    fns, opts, grids = _resolve(functions, optimizers, lr)
    rows = teach.compare(fns, opts, n_iter=n_iter, tol=tol, lr_grid=grids)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(format_table(rows))


def format_table(rows) -> str:
    """A fixed-width table of `compare` rows (also used for docs/results/optimizers.md)."""
    head = ("function", "optimizer", "params", "iters to tol", "final |f-f*|", "dist to min", "status")
    lines = []
    for r in rows:
        params = " ".join(f"{k}={v:.3g}" for k, v in r["params"].items() if k != "eps_inside")
        reached = "-" if r["iters_to_tol"] is None else str(r["iters_to_tol"])
        status = r["status"] if r["status"] == "ok" else f"{r['status']} (step {r['steps'] + 1})"
        lines.append(
            (
                r["function"],
                r["optimizer"],
                params,
                reached,
                f"{r['final_gap']:.3g}",
                "?" if r["final_distance"] is None else f"{r['final_distance']:.3g}",
                status,
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line).rstrip() for line in lines]
    if rows:
        out.append(f"tol = {rows[0]['tol']:g}; '-' = not reached in {rows[0]['n_iter']} iterations")
    return "\n".join(out)
