"""A search's results (`tune_report`): `trials.csv` (every trial: state, validation macro-F1, epochs, settings),
`best.toml` (the best finished trial's config, a recipe `cnnlab train --config` takes), `results.json`, the
figures (the optimisation history, every trial's validation curve, the parameters' importances) and `report.md` /
`report.html` in the reporter's language. Everything is read from Optuna's storage and the trials' run folders,
so a rerun of a finished search rewrites the same report without training."""

from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path

from cnnlab.config import Config
from cnnlab.files import atomic_write, write_text
from cnnlab.reporting.strings import text
from cnnlab.studies.reports import Doc, machine
from cnnlab.training.run_folder import HISTORY, read_config, read_history


def _rows(study, out: Path) -> list[dict]:
    """One dict a trial: number, state, value (best validation macro-F1; None unless finished), epochs trained,
    seconds, settings, run folder."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        run = out / "trials" / f"trial-{t.number:03d}"
        history = read_history(run / HISTORY) if (run / HISTORY).is_file() else []
        # a pruned trial's best epoch (Optuna keeps its last one as its value); nothing for a trial unfinished
        best = max((r["val_f1"] for r in history), default=None) if t.state.name == "PRUNED" else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value if t.state.name == "COMPLETE" else best,
                "epochs": len(history),
                "seconds": sum(r["epoch_s"] for r in history),
                "params": dict(t.params),
                "out": str(run),
                "curve": [r["val_f1"] for r in history],
            }
        )
    return rows


def _importances(study) -> dict[str, float]:
    """Optuna's parameter importances (its default evaluator) over the finished trials; empty when fewer than two
    finished or no parameter varied among them."""
    import optuna

    try:
        with warnings.catch_warnings():  # few trials: Optuna warns that its quantiles coincide
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def _write_trials(rows: list[dict], names: list[str], path: Path) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", "best_val_f1", "epochs", "seconds", *names, "out"])
        for r in rows:
            value = "" if r["value"] is None else f"{r['value']:.6g}"
            w.writerow(
                [r["trial"], r["state"], value, r["epochs"], f"{r['seconds']:.1f}"]
                + [r["params"].get(n, "") for n in names]
                + [r["out"]]
            )


def tune_summary(study, params, out: Path) -> dict:
    """What a search found, as results.json holds it: the trials, the best finished one, the counts."""
    rows = _rows(study, out)
    finished = [r for r in rows if r["state"] == "complete"]
    best = max(finished, key=lambda r: (r["value"], -r["trial"])) if finished else None
    return {
        "trials": rows,
        "best": best,
        "n_complete": len(finished),
        "n_pruned": sum(r["state"] == "pruned" for r in rows),
        "epochs_trained": sum(r["epochs"] for r in rows),
        "seconds": sum(r["seconds"] for r in rows),
        "importances": _importances(study) if len(finished) >= 2 else {},
        "params": [p.name for p in params],
    }


def tune_report(study, base: Config, params, out: Path, lang: str = "en") -> dict:
    """Write trials.csv, best.toml, results.json, the figures and the report of the search in `out`; -> the
    summary (`tune_summary`)."""
    from cnnlab.reporting.figures import importance_figure, save, tune_curves_figure, tune_history_figure

    s = tune_summary(study, params, out)
    _write_trials(s["trials"], s["params"], out / "trials.csv")
    if s["best"] is not None:
        read_config(Path(s["best"]["out"])).save(out / "best.toml")
    write_text(out / "results.json", json.dumps(s, indent=1) + "\n")
    save(tune_history_figure(s["trials"]), out / "history.png")
    save(tune_curves_figure(s["trials"]), out / "curves.png")
    if s["importances"]:
        save(importance_figure(s["importances"]), out / "importance.png")
    _document(s, base, out, lang).write(out)
    return s


def _document(s: dict, base: Config, out: Path, lang: str) -> Doc:
    def t(key: str, **values) -> str:
        return text(lang, key, **values)

    doc = Doc(t("tune.title"), lang)
    date = time.strftime("%Y-%m-%d")
    doc.p(t("tune.intro", path=base.data.path, date=date, machine=machine(), n=len(s["trials"])))
    doc.p(t("tune.counts", complete=s["n_complete"], pruned=s["n_pruned"], epochs=s["epochs_trained"],
            minutes=s["seconds"] / 60))  # fmt: skip
    if s["best"] is not None:
        b = s["best"]
        settings = ", ".join(f"`{k} = {v}`" for k, v in b["params"].items())
        doc.p(t("tune.best", trial=b["trial"], f1=b["value"], settings=settings, epochs=b["epochs"]))
    else:
        doc.p(t("tune.no_best"))
    doc.table(
        [t("col.trial"), t("col.state"), t("col.val_f1"), t("col.epochs"), *s["params"]],
        [
            [
                r["trial"],
                t(f"tune.state.{r['state']}"),
                "" if r["value"] is None else f"{r['value']:.4f}",
                r["epochs"],
                *(_shown(r["params"].get(n, "")) for n in s["params"]),
            ]
            for r in s["trials"]
        ],
    )
    doc.image(out / "history.png", t("tune.history_alt"))
    doc.image(out / "curves.png", t("tune.curves_alt"))
    if s["importances"]:
        doc.h(t("tune.importance"))
        doc.bullets([f"`{k}`: {v:.3f}" for k, v in s["importances"].items()])
        doc.image(out / "importance.png", t("tune.importance_alt"))
    doc.p(t("tune.footer"))
    return doc


def _shown(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
