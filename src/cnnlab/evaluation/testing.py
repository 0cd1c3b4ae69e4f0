"""The single test of a chosen run (`test_run`), and its gallery of errors (`error_gallery`).

Every test evaluation is counted in the run folder (evaluations.json): scoring the same split twice warns,
because a test split used for choices stops being a test split. Each evaluation has a folder of its own,
RUN/tests/NAME/ (`folder_name`: the data set, the manifest, a short hash of the images), so a test on another data
set never overwrites an earlier one: test.json (the scores), test_predictions.csv (each image's class, prediction
and probabilities: any subset's figures come from this one evaluation, never from another), test_confusion.png and
test_errors.png. `result_files`, `read_test` and `find_test` read them back (and a run folder's top-level test.json
from before tests/).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from pathlib import Path

import torch

from cnnlab.config import Config
from cnnlab.data.cache import ImageSet, load_images
from cnnlab.data.decode import DecodeSettings
from cnnlab.data.folders import check_root, printable, report_skipped, scored_split
from cnnlab.data.labels import is_label_file
from cnnlab.data.manifest import read_manifest
from cnnlab.errors import UserError
from cnnlab.evaluation.loading import load_run
from cnnlab.files import atomic_write, write_text
from cnnlab.training.engine import Engine
from cnnlab.training.loops import predict_logits
from cnnlab.training.metrics import confusion, macro_f1, per_class

EVALUATIONS = "evaluations.json"


def _split_id(samples) -> str:
    """Format 1 of the evaluation key, by paths: kept to recognise evaluations counted before content keys."""
    h = hashlib.sha1()
    for s in sorted(str(s.path) for s in samples):
        h.update(s.encode())
    return h.hexdigest()[:16]


def _content_id(samples, classes: list[str]) -> str:
    """The evaluation key: the images' bytes and labels, so a copy of a test folder is the same test."""
    from cnnlab.data.duplicates import file_hashes

    h = hashlib.sha1()
    for item in sorted(
        f"{d}:{classes[s.label]}" for d, s in zip(file_hashes([s.path for s in samples]), samples, strict=True)
    ):
        h.update(item.encode())
    return h.hexdigest()[:16]


def _evaluations(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(history, list) and all(isinstance(e, dict) for e in history):
            return history
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    raise UserError(
        f"{path} is damaged: it counts this run's test evaluations, and a test cannot be counted "
        "without it (restore it from a backup; deleting it would hide earlier evaluations)"
    )


TESTS = "tests"  # RUN/tests/NAME/: one folder an evaluation
RESULT = "test.json"  # in each: the scores; beside it test_predictions.csv, test_confusion.png, test_errors.png
_HASH = re.compile(r"[0-9a-f]{8}")


def folder_name(root: Path, manifest: str | None, content_id: str) -> str:
    """The folder of an evaluation in RUN/tests/: the data set folder's name, then the manifest's stem, then the
    first 8 characters of the content id (so two data sets of one name never share a folder, and the same images
    tested again reuse theirs), e.g. `ecl-1f3a9c0d`, `ecl-leak_free_test-77b2e410`; a label file by its stem."""
    name = root.stem if root.suffix.lower() == ".csv" else root.name
    return "-".join([*(_safe(p) for p in (name, *([Path(manifest).stem] if manifest else []))), content_id[:8]])


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", part).strip("._-")[:40] or "data"


def result_files(run: Path) -> dict[str, Path]:
    """Each test.json of the run by NAME, in name order: RUN/tests/NAME/test.json, then, from a run folder of
    before tests/, its top-level test.json or test-MANIFEST.json (NAME: the file's stem)."""
    run = Path(run)
    found = {p.parent.name: p for p in sorted((run / TESTS).glob(f"*/{RESULT}")) if p.is_file()}
    old = [run / RESULT, *sorted(run.glob("test-*.json"))]
    return {**found, **{p.stem: p for p in old if p.is_file() and p.stem not in found}}


def read_test(path: Path) -> dict:
    """A test.json's content; a damaged one is a UserError."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(result, dict):
            return result
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    raise UserError(f"{path} is damaged or not a cnnlab test result")


def find_test(run: Path, data: str | Path, manifest: str | None = None) -> dict | None:
    """The run's test on data set `data` (and `manifest`), read back, or None: from RUN/tests/, the newest of its
    folders for that data set; else, in a run folder of before tests/, the top-level test.json."""
    run, root = Path(run), Path(data).expanduser().resolve()
    prefix = folder_name(root, manifest, "")  # ends in "-"
    mine = [
        p
        for p in (run / TESTS).glob(f"*/{RESULT}")
        if p.parent.name.startswith(prefix)
        and _HASH.fullmatch(p.parent.name[len(prefix) :])
        and read_test(p).get("data") == str(root)
    ]
    if mine:
        return read_test(max(mine, key=lambda p: p.stat().st_mtime_ns))
    return read_test(run / RESULT) if (run / RESULT).is_file() else None


def test_run(
    run: Path,
    data: str | None = None,
    manifest: str | None = None,
    class_map: str | None = None,
    name: str | None = None,
) -> dict:
    """Score the run's best checkpoint on a test folder (or the images a manifest lists), once: the evaluation is
    counted in evaluations.json, and a repeat warns. Writes test.json and the rest into RUN/tests/NAME/
    (`folder_name`); `name` labels the split in them (default `test`, or `test-MANIFEST` for a manifest).
    Returns test.json's content."""
    return run_test(run, data, manifest, class_map, name)[0]


def run_test(
    run: Path,
    data: str | None = None,
    manifest: str | None = None,
    class_map: str | None = None,
    name: str | None = None,
) -> tuple[dict, Path]:
    """`test_run`, and the folder it wrote: choose the images, count the evaluation, predict, score, write the
    files, record the evaluation, draw the gallery of errors."""
    run = Path(run)
    cfg, ckpt, eng = load_run(run)
    classes = list(ckpt["classes"])
    source, root, images, skipped, split = _choose_images(cfg, classes, data, manifest, class_map, name)
    # Count before scoring: a repeated evaluation is reported even if this one is interrupted.
    split_id, content_id = _split_id(images.samples), _content_id(images.samples, classes)
    history, earlier = _earlier_evaluations(run, split_id, content_id)
    logits = predict_logits(eng, images, cfg.train.eval_batch_size)
    cm, scored = _score(images.labels, logits.argmax(1), classes)
    result = {
        "run": str(run),
        "data": str(source),
        "split": split,
        "n_images": int(len(images.labels)),
        **scored,
        "classes": classes,
        "best_epoch": int(ckpt["epoch"]),
        "evaluation_number": earlier + 1,
        "skipped": skipped,
    }
    folder = run / TESTS / folder_name(source, manifest, content_id)
    _write_files(folder, result, cm, images, root, logits)
    _record_evaluation(run, history, split_id, content_id, result)
    # After the count: the gallery reuses this evaluation's logits and is no further evaluation.
    error_gallery(cfg, eng, images, logits, classes, folder / "test_errors.png", title=split)
    return result, folder


def _choose_images(
    cfg: Config, classes: list[str], data: str | None, manifest: str | None, class_map: str | None, name: str | None
) -> tuple[Path, Path, ImageSet, int, str]:
    """The images to score: a manifest's, else the test split of `data` (default: the run's own data set; a label
    file's test rows), decoded as the run was trained; -> the data set (its root, or the label file), the root the
    images' paths are relative to, the images, how many were skipped, and the split's label."""
    given = Path(data or cfg.data.path)
    root = check_root(given)
    source = given.expanduser().resolve() if is_label_file(given) else root
    if manifest:
        samples = read_manifest(Path(manifest), root, classes, split="test")
        name = name or f"test-{Path(manifest).stem}"
    else:  # the run's classes decide: any layout, other names mapped, another training folder never read
        own = not data or bool(cfg.data.path) and Path(cfg.data.path).exists() and _same(given, Path(cfg.data.path))
        _, samples, _ = scored_split(
            given, classes, class_map or (cfg.data.class_map if own else None), cfg.data.strict
        )
        name = name or "test"
    images, bad, _ = load_images(
        samples, root, DecodeSettings.of(cfg.data), cfg.data.cache_dir or None, mode=cfg.data.cache
    )
    if bad:
        report_skipped(bad, strict=cfg.data.strict)
    return source, root, images, len(bad), name


def _same(a: Path, b: Path) -> bool:
    """Whether two data set paths name the same data set (the same folder, or the same label file)."""
    return a.expanduser().resolve() == b.expanduser().resolve() and is_label_file(a) == is_label_file(b)


def _earlier_evaluations(run: Path, split_id: str, content_id: str) -> tuple[list[dict], int]:
    """evaluations.json's entries, and how many of them evaluated these images (by content; by paths for entries
    from before content ids): warns when any did."""
    history = _evaluations(run / EVALUATIONS)
    earlier = [
        e for e in history if (e["content_id"] == content_id if "content_id" in e else e.get("split_id") == split_id)
    ]
    if earlier:
        warnings.warn(
            f"this test split was already evaluated {len(earlier)} time(s) for {run}: a test score "
            "reused for choices is no longer a fair estimate",
            UserWarning,
            stacklevel=3,
        )
    return history, len(earlier)


def _record_evaluation(run: Path, history: list[dict], split_id: str, content_id: str, result: dict) -> None:
    """This evaluation appended to evaluations.json (the run's count of its tests, at the run folder's top)."""
    history.append(
        {
            "content_id": content_id,
            "split_id": split_id,
            "split": result["split"],
            "n_images": result["n_images"],
            "time": time.time(),
            "macro_f1": result["macro_f1"],
        }
    )
    write_text(run / EVALUATIONS, json.dumps(history, indent=2))


def _score(y: torch.Tensor, pred: torch.Tensor, classes: list[str]) -> tuple[torch.Tensor, dict]:
    """The confusion matrix, and test.json's scores from it (training/metrics.py): macro-F1 over every class (one
    absent from the test counts 0), accuracy, each class's precision, recall, F1 and support."""
    from sklearn.metrics import accuracy_score

    cm = confusion(y, pred, len(classes))
    pc = per_class(cm)
    return cm, {
        "macro_f1": macro_f1(cm, every_class=True),
        "accuracy": float(accuracy_score(y.numpy(), pred.numpy())),
        "per_class": {
            c: {
                "precision": float(pc["precision"][i]),
                "recall": float(pc["recall"][i]),
                "f1": float(pc["f1"][i]),
                "support": int(pc["support"][i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }


def _write_files(
    folder: Path, result: dict, cm: torch.Tensor, images: ImageSet, root: Path, logits: torch.Tensor
) -> None:
    """test.json, test_predictions.csv and test_confusion.png into the evaluation's folder."""
    from cnnlab.reporting.figures import confusion_panels

    folder.mkdir(parents=True, exist_ok=True)
    classes, split = result["classes"], result["split"]
    write_text(folder / RESULT, json.dumps(result, indent=2))
    _write_predictions(
        folder / "test_predictions.csv",
        images.samples,
        root,
        images.labels.numpy(),
        logits.argmax(1).numpy(),
        logits.softmax(1),
        classes,
    )
    confusion_panels(
        cm.numpy(),
        classes,
        folder / "test_confusion.png",
        title=f"{split}: macro-F1 {result['macro_f1']:.3f}, accuracy {result['accuracy']:.3f}",
    )


def _write_predictions(path: Path, samples, root: Path, y, pred, probs: torch.Tensor, classes: list[str]) -> None:
    """One row an image: its path (relative to the data set's root), true class, predicted class, probabilities."""
    import csv

    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "predicted", *classes])
        for s, t, p, pr in zip(samples, y, pred, probs.tolist(), strict=True):
            rel = s.path.relative_to(root) if s.path.is_relative_to(root) else s.path
            w.writerow([printable(rel), classes[t], classes[p], *(f"{v:.6f}" for v in pr)])


def error_gallery(
    cfg: Config,
    eng: Engine,
    images: ImageSet,
    logits: torch.Tensor,
    classes: list[str],
    path: Path,
    title: str,
    most: int = 24,
) -> None:
    """The misclassified images, the most confident errors first, each with the heatmap of its predicted class
    (`cam.explain_arrays`), true and predicted label and probability. Without heatmaps (an MLP, or grad-cam not
    installed) the images alone, and the title says why."""
    from cnnlab.evaluation.cam import explain_arrays
    from cnnlab.reporting.figures import heatmap_grid

    probs = logits.float().softmax(1)
    conf, pred = probs.max(1)
    wrong = (pred != images.labels).nonzero().flatten().tolist()
    wrong = sorted(wrong, key=lambda i: -float(conf[i]))[:most]
    arrays = [images.images[i].numpy() for i in wrong]
    note = ""
    try:
        maps = [r["heatmap"] for r in explain_arrays(eng, arrays, classes, model_name=cfg.model.model)]
    except UserError as e:
        maps, note = [None] * len(arrays), f" (no heatmaps: {e})"
    cells = [
        {
            "image": a.transpose(1, 2, 0),
            "heatmap": m,
            "caption": f"{images.samples[i].path.name[:18]}\ntrue {classes[int(images.labels[i])]}\n"
            f"pred {classes[int(pred[i])]} {float(conf[i]):.0%}",
        }
        for i, a, m in zip(wrong, arrays, maps, strict=True)
    ]
    n_wrong = int((pred != images.labels).sum())
    heatmap_grid(
        cells,
        path,
        cols=6,
        title=f"{title}: {n_wrong} of {len(images)} misclassified; the {len(cells)} "
        f"most confident, heatmap of the predicted class{note}",
    )
