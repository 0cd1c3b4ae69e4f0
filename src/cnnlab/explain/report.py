"""The figures of `cnnlab explain --boxes` and what it writes: `summarize` (the scored rows -> the JSON's figures,
overall and per class, beside their baselines), `summary_lines` (the CLI's readable summary), `write_localisation`
(explain.json, localisation.csv, explain.md and the hits and misses galleries).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from cnnlab.files import write_text

# baseline -> the per-image column it is the mean of
BASELINES = {
    "random": "box_area",
    "random_tol": "tol_area",
    "centre": "centre_hit",
    "centre_tol": "centre_hit_tol",
    "class_prior": "prior_hit",
    "class_prior_tol": "prior_hit_tol",
}

PER_CLASS_HEADER = ["class", "n", "pointing game", "tolerance", "energy", "random", "random tol", "centre"]
PER_CLASS_HEADER += ["centre tol", "prior", "prior tol"]


def _mean(rows: list[dict], key: str) -> float | None:
    return float(np.mean([r[key] for r in rows])) if rows else None


def _figures(rows: list[dict]) -> dict:
    """The pointing games, the energy and the baselines of some scored rows."""
    return {
        "pointing_game": _mean(rows, "hit"),
        "pointing_game_tol": _mean(rows, "hit_tol"),
        "energy_in_box": _mean(rows, "energy_in_box"),
        "random_pointing_game": _mean(rows, "box_area"),
        "baselines": {name: _mean(rows, key) for name, key in BASELINES.items()},
    }


def _prior_by(rows: list[dict]) -> str:
    known = sum(bool(r["true"]) for r in rows)
    if known == len(rows):
        return "true class"
    return "predicted class" if not known else "true class where known, else the predicted class"


def summarize(rows: list[dict], classes: list[str]) -> dict:
    """The JSON's figures of the scored rows (one an image, as `heatmaps._score` makes them)."""
    figures = _figures(rows)
    tols = [r["tol_px"] for r in rows]
    out = {
        "n_images": len(rows),
        **{k: v for k, v in figures.items() if k != "random_pointing_game"},
        "tolerance_px": float(np.mean(tols)),
        "tolerance": "15/224 of the heatmap's longer side, from a pixel centre to the box rectangle",
        "random_pointing_game": figures["random_pointing_game"],
        "random_energy_in_box": figures["random_pointing_game"],
    }
    if min(tols) != max(tols):
        out["tolerance_px_range"] = [min(tols), max(tols)]
    known = [r for r in rows if r["true"]]
    by = "true" if known else "label"
    if known:
        correct = [r for r in known if r["label"] == r["true"]]
        out.update(
            accuracy=len(correct) / len(known),
            n_correct=len(correct),
            pointing_game_correct=_mean(correct, "hit"),
            pointing_game_tol_correct=_mean(correct, "hit_tol"),
            energy_in_box_correct=_mean(correct, "energy_in_box"),
        )
    out["per_class"] = {c: {"n": len(rs), **_figures(rs)} for c in classes if (rs := [r for r in rows if r[by] == c])}
    out["per_class_by"] = "true class" if known else "predicted class"
    out["class_prior_by"] = _prior_by(rows)
    return out


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def summary_lines(r: dict) -> list[str]:
    """The readable summary `cnnlab explain --boxes` prints without --json."""
    b = r["baselines"]
    lines = [
        f"{r['n_images']} images, {r['method']} (layer {r['layer']}): pointing game {_f(r['pointing_game'])} "
        f"(random {_f(r['random_pointing_game'])}), with {r['tolerance_px']:.1f} px tolerance "
        f"{_f(r['pointing_game_tol'])} (random {_f(b['random_tol'])}), energy in box {_f(r['energy_in_box'])} "
        f"(random {_f(r['random_energy_in_box'])})",
        f"  baselines: centre point {_f(b['centre'])} (tolerance {_f(b['centre_tol'])}), class prior "
        f"{_f(b['class_prior'])} (tolerance {_f(b['class_prior_tol'])}; from {r['class_prior_images']} training "
        f"images' boxes, by {r['class_prior_by']})",
    ]
    if r["class_prior_fallback"]:
        lines.append(f"  no training box for {', '.join(r['class_prior_fallback'])}: its prior is the centre")
    if "accuracy" in r:
        lines.append(
            f"  accuracy {r['accuracy']:.3f}; pointing game of the correct ones {_f(r['pointing_game_correct'])}"
        )
    for c, v in r["per_class"].items():
        pb = v["baselines"]
        lines.append(
            f"  {c} ({r['per_class_by']}, n={v['n']}): pointing game {_f(v['pointing_game'])} (tolerance "
            f"{_f(v['pointing_game_tol'])}), centre {_f(pb['centre'])} ({_f(pb['centre_tol'])}), class prior "
            f"{_f(pb['class_prior'])} ({_f(pb['class_prior_tol'])}), random {_f(pb['random'])}"
        )
    return lines


def _table(header: list[str], rows: list[list]) -> list[str]:
    cell = lambda v: _f(v) if isinstance(v, float) or v is None else str(v)  # noqa: E731
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]


def _prior_section(r: dict) -> list[str]:
    """explain.md's class prior: where it came from, each class's point."""
    src = r["class_prior_source"]
    return [
        "## Class prior",
        "",
        f"Each image is pointed at the densest point of the boxes of its class ({r['class_prior_by']}) over the run's "
        f"own training images: the train rows of {src['split']} with a box, {r['class_prior_images']} images "
        f"({src['left_out_scored']} of the {src['train_rows_boxed']} boxed train rows left out: scored here too). "
        f"Points in pixels of a {src['grid'][0]} x {src['grid'][1]} canvas."
        + (f" {src['note']}." if "note" in src else ""),
        "",
        *_table(
            ["class", "training images", "x", "y", "note"],
            [
                [c, p["images"], f"{p['x']:.1f}", f"{p['y']:.1f}", p["fallback"] or ""]
                for c, p in r["class_prior_points"].items()
            ],
        ),
    ]


def _markdown(r: dict) -> str:
    """explain.md: the figures beside their baselines, per class, and where the class prior came from."""
    b = r["baselines"]
    lines = [
        f"# Localisation: {r['run']}",
        "",
        f"{r['n_images']} images scored against the boxes of {r['boxes']}"
        + (f" (the test rows of {r['manifest']})" if r["manifest"] else "")
        + f"; heatmaps: {r['method']}, layer {r['layer']} ({', '.join(r['layer_modules'])}), target {r['target']}. "
        f"Tolerance: {r['tolerance_px']:.2f} px ({r['tolerance']}). All in the heatmap's pixels, after the run's "
        "crop, resize and padding.",
        "",
        *_table(
            ["", "pointing game", "with tolerance", "energy in box"],
            [
                [f"{r['method']} @ {r['layer']}", r["pointing_game"], r["pointing_game_tol"], r["energy_in_box"]],
                ["random heatmap", b["random"], b["random_tol"], r["random_energy_in_box"]],
                ["centre point", b["centre"], b["centre_tol"], None],
                ["class prior", b["class_prior"], b["class_prior_tol"], None],
            ],
        ),
        "",
        f"## Per class (by {r['per_class_by']})",
        "",
        *_table(
            PER_CLASS_HEADER,
            [
                [c, v["n"], v["pointing_game"], v["pointing_game_tol"], v["energy_in_box"]]
                + [v["baselines"][k] for k in BASELINES]
                for c, v in r["per_class"].items()
            ],
        ),
        "",
        *_prior_section(r),
    ]
    if "accuracy" in r:
        lines += [
            "",
            f"Accuracy {r['accuracy']:.3f}; pointing game of the correct ones {_f(r['pointing_game_correct'])}.",
        ]
    return "\n".join(lines) + "\n"


def write_localisation(out: Path, result: dict, rows: list[dict], shown: dict) -> None:
    """explain.json, localisation.csv (a row an image), explain.md and the galleries hits.png, misses.png."""
    from cnnlab.reporting.figures import heatmap_grid

    write_text(out / "explain.json", json.dumps(result, indent=2))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    write_text(out / "localisation.csv", table.getvalue())
    write_text(out / "explain.md", _markdown(result))
    b = result["baselines"]
    figures = (
        f"pointing game {_f(result['pointing_game'])} (tolerance {_f(result['pointing_game_tol'])}), centre "
        f"{_f(b['centre'])} ({_f(b['centre_tol'])}), class prior {_f(b['class_prior'])} ({_f(b['class_prior_tol'])})"
    )
    for name, sample in shown.items():
        if sample.items:
            heatmap_grid(
                sample.items,
                out / f"{name}.png",
                cols=6,
                title=f"{name} of the pointing game ({result['method']}, layer {result['layer']}): "
                f"{len(sample.items)} of {sample.n}\n{figures}; green: the box, x: the heatmap's maximum",
            )
