"""The single test of a chosen run, and prediction on any images.

Every test evaluation is counted in the run folder (evaluations.json): scoring the same split twice warns,
because a test split used for choices stops being a test split.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import torch

from cnnlab import data as data_mod
from cnnlab import runs
from cnnlab.config import Config
from cnnlab.engine import Engine, make_engine
from cnnlab.errors import UserError
from cnnlab.images import BadImage, ImageSet, Prep, decode, load_images
from cnnlab.loops import predict_logits
from cnnlab.models import build


def load_run(run: Path, which: str = "best") -> tuple[Config, dict, Engine]:
    """-> (the checkpoint's config, the checkpoint, an engine with its weights in eval mode).

    `which`: best (default), last, or epoch-NNN. The checkpoint decides everything: its config builds the model
    and decodes images, its classes name the outputs, its statistics normalise."""
    run = Path(run)
    runs.read_config(run)  # a clear error for a folder that is not a run
    path = run / f"{which}.pt"
    if which == "best" and not path.is_file() and (run / runs.LAST).is_file():
        raise UserError(f"{path} is missing although {run / runs.LAST} exists: the run has finished epochs, "
                        "but its best checkpoint was deleted or moved")
    ckpt = runs.load_checkpoint(path, hint="" if path.is_file() else ": the run has not finished an epoch yet")
    cfg = Config.from_dict(ckpt["config"])
    cfg.train.device = "cpu" if not torch.cuda.is_available() else cfg.train.device
    model = build(cfg.model, cfg.data.channels, len(ckpt["classes"]), cfg.data.image_size)
    model.load_state_dict(ckpt["model"])
    eng = make_engine(cfg, model, ckpt["mean"], ckpt["std"])
    eng.model.eval()
    return cfg, ckpt, eng


def _split_id(samples) -> str:
    h = hashlib.sha1()
    for s in sorted(str(s.path) for s in samples):
        h.update(s.encode())
    return h.hexdigest()[:16]


def test_run(run: Path, data: str | None = None, manifest: str | None = None, class_map: str | None = None,
             log=print) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
    from sklearn.metrics import confusion_matrix as sk_confusion

    from cnnlab.plots import confusion_matrix

    run = Path(run)
    cfg, ckpt, eng = load_run(run)
    classes = list(ckpt["classes"])
    data = data or cfg.data.path
    ds = data_mod.scan(data, class_map=class_map or cfg.data.class_map, strict=cfg.data.strict)
    if ds.classes != classes:
        raise UserError(f"classes of {ds.root} {ds.classes} differ from the run's {classes}")
    if manifest:
        samples = data_mod.read_manifest(Path(manifest), ds.root, classes, split="test")
        name = f"test-{Path(manifest).stem}"
    else:
        if "test" not in ds.splits:
            raise UserError(f"no test split in {ds.root}: expected a test/ or testing/ folder")
        samples = ds.splits["test"]
        name = "test"
    images, bad, _ = load_images(samples, ds.root, Prep.of(cfg.data), cfg.data.cache_dir or None)
    if bad:
        data_mod.report_skipped(bad, strict=cfg.data.strict)

    # Count before scoring: a repeated evaluation is reported even if this one is interrupted.
    split_id = _split_id(images.samples)
    log_path = run / "evaluations.json"
    history = json.loads(log_path.read_text()) if log_path.exists() else []
    earlier = [e for e in history if e["split_id"] == split_id]
    if earlier:
        warnings.warn(f"this test split was already evaluated {len(earlier)} time(s) for {run}: a test score "
                      "reused for choices is no longer a fair estimate", UserWarning, stacklevel=2)

    pred = predict_logits(eng, images, cfg.train.eval_batch_size).argmax(1).numpy()
    y = images.labels.numpy()
    labels = list(range(len(classes)))
    p, r, f, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = sk_confusion(y, pred, labels=labels)
    result = {
        "run": str(run), "data": str(ds.root), "split": name, "n_images": int(len(y)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(sup[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(), "classes": classes, "best_epoch": int(ckpt["epoch"]),
        "evaluation_number": len(earlier) + 1, "skipped": len(bad),
    }
    (run / f"{name}.json").write_text(json.dumps(result, indent=2))
    confusion_matrix(cm, classes, run / f"{name}_confusion.png",
                     title=f"{name}: macro-F1 {result['macro_f1']:.3f}, accuracy {result['accuracy']:.3f}")
    history.append({"split_id": split_id, "split": name, "n_images": int(len(y)), "time": time.time(),
                    "macro_f1": result["macro_f1"]})
    log_path.write_text(json.dumps(history, indent=2))
    return result


def expand_paths(paths) -> list[Path]:
    exts = data_mod.image_extensions()
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts
                          and not any(part.startswith(".") for part in q.relative_to(p).parts))
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"no such image or folder: {p}")
    if not out:
        raise UserError("no images found in the given paths")
    return out


def predict(run: Path, paths, batch_size: int = 256) -> list[dict]:
    cfg, ckpt, eng = load_run(run)
    prep, classes = Prep.of(cfg.data), list(ckpt["classes"])
    files, arrays = [], []
    for f in expand_paths(paths):
        try:
            arrays.append(torch.from_numpy(decode(f, prep)[0]))
            files.append(f)
        except BadImage as e:
            if len(paths) == 1 and Path(paths[0]).is_file():
                raise UserError(f"cannot read image {f}: {e}") from None
            warnings.warn(f"skipped {f}: {e}", UserWarning, stacklevel=2)
    if not files:
        raise UserError("none of the given images could be read")
    images = ImageSet(images=torch.stack(arrays) if prep.resize != "keep" else arrays,
                      labels=torch.zeros(len(files), dtype=torch.long),
                      samples=[data_mod.Sample(f, -1, "predict") for f in files], sizes=[], modes=[])
    probs = predict_logits(eng, images, batch_size).softmax(1)
    return [{"path": str(f), "label": classes[int(pr.argmax())],
             "probs": {c: float(pr[i]) for i, c in enumerate(classes)}} for f, pr in zip(files, probs, strict=True)]
