"""Cross-validation on a data set's own folds (e.g. patient-wise ones): the honest score on unseen subjects.

For each fold K, one run trains on the other folds and is scored once on fold K. Its validation (checkpoint
choice, early stopping) is another whole fold, the next one in order, so it too meets only unseen subjects and
never sees fold K. The runs go through the study executors, so `--jobs` and `--executor ray` work here too;
rerunning the command resumes unfinished folds and reads back finished ones (each fold is tested once).

    OUT/folds/fold-K.csv   the fold's manifest: train and val rows (the training folds), test rows (fold K)
    OUT/fold-K/            the fold's run folder, with its test in tests/NAME/test.json
    OUT/cv.json            per-fold and mean figures, the summed confusion matrix, command, machine, date
    OUT/report.md, .html   the per-fold table, the confusion matrix, the folds' learning curves
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np

from cnnlab.config import Config
from cnnlab.data.folders import Dataset, scan
from cnnlab.data.labels import protected_paths
from cnnlab.data.manifest import read_manifest
from cnnlab.data.splits import group_folds, natural_key
from cnnlab.errors import UserError
from cnnlab.evaluation.testing import find_test, test_run
from cnnlab.files import output_folder, write_text
from cnnlab.reporting.reporter import Reporter
from cnnlab.reporting.strings import text
from cnnlab.studies.definitions import study_threads
from cnnlab.studies.executors import Executor, Job, given_or_local
from cnnlab.studies.reports import Doc, machine
from cnnlab.training import run_folder
from cnnlab.training.checks import check_config, make_config

FOLD_FIELDS = ("path", "class", "fold")


def read_folds(path: Path, ds: Dataset) -> dict[str, list[tuple[str, str]]]:
    """fold -> [(path relative to the data set, class)], every listed image checked against the data set."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"folds file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not set(FOLD_FIELDS) <= set(reader.fieldnames):
            raise UserError(f"{path} needs the columns {', '.join(FOLD_FIELDS)}")
        rows = list(reader)
    read_manifest(path, ds.root, ds.classes)  # every file exists, every class is the data set's
    folds: dict[str, list[tuple[str, str]]] = {}
    fold_of: dict[str, str] = {}
    for i, row in enumerate(rows, start=2):
        fold = (row.get("fold") or "").strip()
        if not fold or not all(c.isalnum() or c in "-_." for c in fold) or fold.strip(".") == "":
            raise UserError(f"{path}:{i}: fold '{fold}' is empty or not a plain name (letters, digits, - _ .)")
        rel = ds.rel((ds.root / row["path"]).resolve())
        if fold_of.setdefault(rel, fold) != fold:  # an image in two folds would be trained on and tested on
            raise UserError(f"{path}:{i}: {rel} is listed in folds {fold_of[rel]} and {fold}")
        folds.setdefault(fold, []).append((rel, row["class"]))
    if len(folds) < 3:
        raise UserError(
            f"{path} has {len(folds)} fold(s): cross-validation here needs at least 3 "
            "(one to test, one to validate, the rest to train)"
        )
    return dict(sorted(folds.items(), key=lambda kv: natural_key(kv[0])))


def write_fold_manifests(folds: dict[str, list[tuple[str, str]]], out: Path) -> dict[str, Path]:
    """One manifest a fold: the next fold validates, the others train, this one is the test."""
    names = list(folds)
    paths = {}
    output_folder(out / "folds", what="folds folder")
    for i, k in enumerate(names):
        val = names[(i + 1) % len(names)]
        paths[k] = out / "folds" / f"fold-{k}.csv"
        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "class", "split", "fold"])
        for j, rows in folds.items():
            split = "test" if j == k else "val" if j == val else "train"
            w.writerows([p, c, split, j] for p, c in rows)
        if paths[k].is_file() and paths[k].read_text(encoding="utf-8") != buf.getvalue():
            # The runs there were trained (and maybe tested) on other folds: mixing them would leak.
            raise UserError(f"{out} holds a cross-validation made with other folds: use a new --out")
        write_text(paths[k], buf.getvalue())
    return paths


def _jobs(base: Config, manifests: dict[str, Path], out: Path, threads: int) -> list[Job]:
    jobs = []
    for k, manifest in manifests.items():
        try:
            cfg = make_config(
                base.absolute(), {"train_manifest": str(manifest), "val_manifest": str(manifest), "threads": threads}
            )
            jobs.append(Job(f"fold-{k}", cfg.train.seed, cfg, str(out / f"fold-{k}")))
        except UserError as e:
            raise UserError(f"fold {k}: {e}") from None
    return jobs


def choose_folds(base: Config, folds_csv: Path | None, ds: Dataset, n_folds: int = 5) -> dict:
    """The folds (`read_folds`'s shape): from a folds file; or, with split = groups and no folds file (or the data
    set's own label file given as one), the data set's groups dealt into `n_folds` (`splits.group_folds`)."""
    own = folds_csv is not None and ds.source is not None and Path(folds_csv).expanduser().resolve() == ds.source
    if folds_csv is not None and not own:
        return read_folds(folds_csv, ds)
    d = base.data
    if d.split != "groups":
        what = f"{folds_csv} is the data set's label file" if own else "no folds file given"
        raise UserError(f"{what}: pass --folds FILE (path,class,fold), or --set split=groups to fold by groups")
    return group_folds(ds, Path(d.group_file) if d.group_file else None, d.block_size, n_folds, d.split_seed)


def run_cv(
    base: Config,
    folds_csv: Path | None,
    out: Path,
    executor: Executor | None = None,
    jobs: int = 1,
    reporter: Reporter | None = None,
    command: str = "",
    n_folds: int = 5,
) -> dict:
    """Train every fold (or resume), test each once, write cv.json and the report (in the reporter's
    language; cv.json is the same in every language); -> the cv.json contents. The folds: `choose_folds`."""
    reporter = reporter or Reporter()
    check_config(base)
    if not base.data.path:
        raise UserError("no dataset given: pass --data DIR")
    ds = scan(base.data.path, class_map=base.data.class_map, warn=False)
    out = output_folder(out, protected_paths(ds), "cross-validation folder", create=False)
    folds = choose_folds(base, folds_csv, ds, n_folds)
    all_jobs = _jobs(base, {k: out / "folds" / f"fold-{k}.csv" for k in folds}, out, study_threads(base, jobs))
    output_folder(out, protected_paths(ds), "cross-validation folder")
    write_fold_manifests(folds, out)
    with given_or_local(executor, jobs, reporter.line) as runner:
        trained = runner.map(all_jobs)
    scored = []
    for job, summary in zip(all_jobs, trained, strict=True):
        # A rerun reads the fold's one test back (RUN/tests/NAME/test.json, or an older run's test.json): it is
        # never scored twice.
        res = find_test(Path(job.out), ds.root, job.config.data.train_manifest) or test_run(
            Path(job.out), str(ds.root), manifest=job.config.data.train_manifest, name="test"
        )
        res = {**res, "pointing": fold_pointing(job, ds.root, base.data.boxes)}
        scored.append((job, summary, res))
        pointing = f", pointing game {res['pointing']['pointing_game']:.3f}" if res["pointing"] else ""
        reporter.line(
            f"  {job.run}: test accuracy {res['accuracy']:.4f}, macro-F1 {res['macro_f1']:.4f} "
            f"({res['n_images']} images){pointing}"
        )
    result = summarize_folds(scored, ds.classes, command)
    write_text(out / "cv.json", json.dumps(result, indent=2) + "\n")
    cv_report(result, scored, out, reporter.lang)
    return result


def fold_pointing(job: Job, root: Path, boxes: str) -> dict | None:
    """With box guidance: where the fold's model looks on its test images, against their boxes (`cnnlab explain
    --boxes` with the model's default map, written once to RUN/explain/ and read back on a rerun); else None."""
    if not boxes:
        return None
    from cnnlab.explain.heatmaps import localisation

    out = Path(job.out) / "explain"
    if (out / "explain.json").is_file():
        r = json.loads((out / "explain.json").read_text(encoding="utf-8"))
    else:
        r = localisation(job.out, boxes, data=root, manifest=job.config.data.train_manifest, out=out)
    keys = ("method", "layer", "n_images", "pointing_game", "pointing_game_tol", "energy_in_box", "baselines")
    return {k: r.get(k) for k in keys} | {
        "per_class": {c: v["pointing_game"] for c, v in r.get("per_class", {}).items()}
    }


def summarize_folds(scored: list[tuple[Job, dict, dict]], classes: list[str], command: str) -> dict:
    folds = [
        {
            "fold": job.run.removeprefix("fold-"),
            "accuracy": res["accuracy"],
            "macro_f1": res["macro_f1"],
            "per_class_recall": {c: m["recall"] for c, m in res["per_class"].items()},
            "n_images": res["n_images"],
            "best_val_f1": summary.get("best_val_f1"),
            "best_epoch": summary.get("best_epoch"),
            "train_minutes": summary.get("wall_s", 0.0) / 60,
            **({"pointing": res["pointing"]} if res.get("pointing") else {}),
        }
        for job, summary, res in scored
    ]

    def spread(key: str) -> tuple[float, float]:
        values = [f[key] for f in folds]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    (acc, acc_sd), (f1, f1_sd) = spread("accuracy"), spread("macro_f1")
    confusion = np.sum([np.array(res["confusion_matrix"]) for _, _, res in scored], axis=0)
    pointing = {}
    if all("pointing" in f for f in folds):
        for key in ("pointing_game", "pointing_game_tol", "energy_in_box"):
            values = [f["pointing"][key] for f in folds]
            pointing[f"mean_{key}"] = statistics.fmean(values)
            pointing[f"std_{key}"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "folds": folds,
        "mean_accuracy": acc,
        "std_accuracy": acc_sd,
        "mean_macro_f1": f1,
        "std_macro_f1": f1_sd,
        "classes": classes,
        "confusion": confusion.tolist(),
        **pointing,
        "command": command,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


def cv_report(result: dict, scored: list[tuple[Job, dict, dict]], out: Path, lang: str = "en") -> None:
    from cnnlab.reporting.figures import confusion_matrix, overlay

    def t(key: str, **values) -> str:
        return text(lang, key, **values)

    doc = Doc(t("cv.title"), lang)
    doc.p(t("cv.intro", command=result["command"], date=result["date"], machine=result["machine"]))
    doc.p(
        t(
            "cv.scores",
            acc=result["mean_accuracy"],
            acc_std=result["std_accuracy"],
            f1=result["mean_macro_f1"],
            f1_std=result["std_macro_f1"],
            n=len(result["folds"]),
        )
    )
    classes = result["classes"]
    boxed = "mean_pointing_game" in result
    doc.table(
        [
            *(t(f"col.{c}") for c in ("fold", "images", "accuracy", "macro_f1")),
            *(t("col.recall", cls=c) for c in classes),
            *(t(f"col.{c}") for c in ("val_f1", "best_epoch", "minutes")),
            *([t("col.pointing")] if boxed else []),
        ],
        [
            [
                f["fold"],
                f["n_images"],
                f"{f['accuracy']:.4f}",
                f"{f['macro_f1']:.4f}",
                *(f"{f['per_class_recall'][c]:.3f}" for c in classes),
                f"{f['best_val_f1']:.4f}",
                f["best_epoch"],
                f"{f['train_minutes']:.1f}",
                *([f"{f['pointing']['pointing_game']:.3f}"] if boxed else []),
            ]
            for f in result["folds"]
        ],
    )
    cm = np.array(result["confusion"])
    confusion_matrix(cm, classes, out / "confusion.png", title="all folds: rows true, columns predicted")
    doc.image(out / "confusion.png", t("cv.confusion_alt"))
    overlay(
        {job.run: run_folder.read_history(Path(job.out) / run_folder.HISTORY) for job, _, _ in scored},
        out / "curves.png",
        title="folds: train solid, validation dashed",
    )
    doc.image(out / "curves.png", t("cv.curves_alt"))
    doc.write(out)
