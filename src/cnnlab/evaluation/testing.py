"""The single test of a chosen run, and prediction on any images.

Every test evaluation is counted in the run folder (evaluations.json): scoring the same split twice warns,
because a test split used for choices stops being a test split. A test writes NAME.json (the scores),
NAME_predictions.csv (each image's class, prediction and probabilities: any subset's figures come from this one
evaluation, never from another), NAME_confusion.png and NAME_errors.png.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import torch

from cnnlab.config import Config
from cnnlab.data.cache import ImageSet, load_images
from cnnlab.data.decode import DecodeSettings
from cnnlab.data.folders import check_root, printable, report_skipped, scored_split
from cnnlab.data.manifest import read_manifest
from cnnlab.errors import UserError
from cnnlab.evaluation.loading import load_run
from cnnlab.files import atomic_write, write_text
from cnnlab.training.engine import Engine
from cnnlab.training.loops import predict_logits


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
    for item in sorted(f"{d}:{classes[s.label]}" for d, s in zip(file_hashes([s.path for s in samples]), samples,
                                                                    strict=True)):
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
    raise UserError(f"{path} is damaged: it counts this run's test evaluations, and a test cannot be counted "
                    "without it (restore it from a backup; deleting it would hide earlier evaluations)")


def test_run(run: Path, data: str | None = None, manifest: str | None = None, class_map: str | None = None,
             log=print, name: str | None = None) -> dict:
    """Score the run's best checkpoint on a test folder (or the images a manifest lists), once: the evaluation is
    counted in evaluations.json, and a repeat warns. Writes NAME.json and NAME_confusion.png into the run
    (NAME: `test`, or `test-MANIFEST` for a manifest, unless given)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
    from sklearn.metrics import confusion_matrix as sk_confusion

    from cnnlab.reporting.figures import confusion_panels

    run = Path(run)
    cfg, ckpt, eng = load_run(run)
    classes = list(ckpt["classes"])
    root = check_root(Path(data or cfg.data.path))
    if manifest:
        samples = read_manifest(Path(manifest), root, classes, split="test")
        name = name or f"test-{Path(manifest).stem}"
    else:  # the run's classes decide: any layout, other names mapped, another training folder never read
        own = root == check_root(Path(cfg.data.path)) if cfg.data.path and Path(cfg.data.path).is_dir() \
            else not data
        _, samples, _ = scored_split(root, classes, class_map or (cfg.data.class_map if own else None),
                                              cfg.data.strict)
        name = name or "test"
    images, bad, _ = load_images(samples, root, DecodeSettings.of(cfg.data), cfg.data.cache_dir or None)
    if bad:
        report_skipped(bad, strict=cfg.data.strict)

    # Count before scoring: a repeated evaluation is reported even if this one is interrupted.
    split_id, content_id = _split_id(images.samples), _content_id(images.samples, classes)
    log_path = run / "evaluations.json"
    history = _evaluations(log_path)
    earlier = [e for e in history if (e["content_id"] == content_id if "content_id" in e
                                      else e.get("split_id") == split_id)]
    if earlier:
        warnings.warn(f"this test split was already evaluated {len(earlier)} time(s) for {run}: a test score "
                      "reused for choices is no longer a fair estimate", UserWarning, stacklevel=2)

    logits = predict_logits(eng, images, cfg.train.eval_batch_size)
    pred = logits.argmax(1).numpy()
    y = images.labels.numpy()
    labels = list(range(len(classes)))
    p, r, f, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = sk_confusion(y, pred, labels=labels)
    result = {
        "run": str(run), "data": str(root), "split": name, "n_images": int(len(y)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(sup[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(), "classes": classes, "best_epoch": int(ckpt["epoch"]),
        "evaluation_number": len(earlier) + 1, "skipped": len(bad),
    }
    write_text(run / f"{name}.json", json.dumps(result, indent=2))
    _write_predictions(run / f"{name}_predictions.csv", images.samples, root, y, pred, logits.softmax(1), classes)
    confusion_panels(cm, classes, run / f"{name}_confusion.png",
                     title=f"{name}: macro-F1 {result['macro_f1']:.3f}, accuracy {result['accuracy']:.3f}")
    history.append({"content_id": content_id, "split_id": split_id, "split": name, "n_images": int(len(y)),
                    "time": time.time(), "macro_f1": result["macro_f1"]})
    write_text(log_path, json.dumps(history, indent=2))
    # After the count: the gallery reuses this evaluation's logits and is no further evaluation.
    error_gallery(cfg, eng, images, logits, classes, run / f"{name}_errors.png", title=name)
    return result


def _write_predictions(path: Path, samples, root: Path, y, pred, probs: torch.Tensor, classes: list[str]) -> None:
    """One row an image: its path (relative to the data set's root), true class, predicted class, probabilities."""
    import csv

    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "predicted", *classes])
        for s, t, p, pr in zip(samples, y, pred, probs.tolist(), strict=True):
            rel = s.path.relative_to(root) if s.path.is_relative_to(root) else s.path
            w.writerow([printable(rel), classes[t], classes[p], *(f"{v:.6f}" for v in pr)])


def error_gallery(cfg: Config, eng: Engine, images: ImageSet, logits: torch.Tensor, classes: list[str], path: Path,
                  title: str, most: int = 24) -> None:
    """The misclassified images, the most confident errors first, each with the heatmap of its predicted class
    (cam.explain_arrays), true and predicted label and probability. Without heatmaps (an MLP, or grad-cam not
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
    cells = [{"image": a.transpose(1, 2, 0), "heatmap": m,
              "caption": f"{images.samples[i].path.name[:18]}\ntrue {classes[int(images.labels[i])]}\n"
                         f"pred {classes[int(pred[i])]} {float(conf[i]):.0%}"}
             for i, a, m in zip(wrong, arrays, maps, strict=True)]
    n_wrong = int((pred != images.labels).sum())
    heatmap_grid(cells, path, cols=6, title=f"{title}: {n_wrong} of {len(images)} misclassified; the {len(cells)} "
                                            f"most confident, heatmap of the predicted class{note}")
