"""Study reports: one document model rendered as Markdown (plots linked) and self-contained HTML (plots
embedded as base64 PNG). Every sentence of a conclusion is computed from the runs' figures."""

from __future__ import annotations

import base64
import html
import math
import platform
import statistics
import time
from pathlib import Path

from cnnlab.files import write_text
from cnnlab.reporting.strings import text
from cnnlab.training.run_folder import read_config, read_history


class Doc:
    """A report as a list of blocks (headings `h`, paragraphs `p`, `bullets`, `table`, `image`), rendered as Markdown
    with the images linked (`markdown`) and as self-contained HTML with them embedded (`html`); `write` writes both."""

    def __init__(self, title: str, lang: str = "en"):
        self.title = title
        self.lang = lang
        self.blocks: list[tuple[str, object]] = []

    def h(self, text: str, level: int = 2):
        self.blocks.append(("h", (level, text)))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list]):
        self.blocks.append(("table", (header, rows)))

    def image(self, path: Path, alt: str):
        self.blocks.append(("img", (Path(path), alt)))

    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, b in self.blocks:
            if kind == "h":
                out += ["#" * b[0] + " " + b[1], ""]
            elif kind == "p":
                out += [b, ""]
            elif kind == "ul":
                out += [f"- {item}" for item in b] + [""]
            elif kind == "table":
                header, rows = b
                out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]
            elif kind == "img":
                out += [f"![{b[1]}]({b[0].relative_to(base).as_posix()})", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        html_tag = "<html>" if self.lang == "en" else f"<html lang='{e(self.lang)}'>"
        out = [
            f"<!doctype html>{html_tag}<head><meta charset='utf-8'><title>{e(self.title)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
            "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
            "img{max-width:100%}code{background:#f3f3f3;padding:1px 4px}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        for kind, b in self.blocks:
            if kind == "h":
                out.append(f"<h{b[0]}>{e(b[1])}</h{b[0]}>")
            elif kind == "p":
                out.append(f"<p>{_inline(b)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b) + "</ul>")
            elif kind == "table":
                header, rows = b
                out.append(
                    "<table><tr>"
                    + "".join(f"<th>{e(h)}</th>" for h in header)
                    + "</tr>"
                    + "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                    + "</table>"
                )
            elif kind == "img":
                data = base64.b64encode(b[0].read_bytes()).decode()
                out.append(f"<p><img alt='{e(b[1])}' src='data:image/png;base64,{data}'></p>")
        return "\n".join(out + ["</body></html>"])

    def write(self, folder: Path, stem: str = "report") -> tuple[Path, Path]:
        md, ht = folder / f"{stem}.md", folder / f"{stem}.html"
        write_text(md, self.markdown(folder))
        write_text(ht, self.html())
        return md, ht


def _inline(text: str) -> str:
    """`code` and **bold** in HTML, escaping everything else."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def machine() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {dev}, torch {torch.__version__}"


# ------------------------------------------------------------------------------------- conclusions


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(m: float, s: float, n: int) -> str:
    return f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}"


def aggregate(results: list[dict]) -> list[dict]:
    """Per run (over seeds): means and spreads of the figures the conclusions use, best first."""
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["run"], []).append(r)
    rows = []
    for run, rs in by.items():
        f1 = _stats([r["best_val_f1"] for r in rs])
        rows.append(
            {
                "run": run,
                "n": len(rs),
                "f1": f1[0],
                "f1_std": f1[1],
                "acc": statistics.fmean(r["best_val_acc"] for r in rs),
                "gap": statistics.fmean(r["best_train_f1"] - r["best_val_f1"] for r in rs),
                "final_gap": statistics.fmean(r["final_train_f1"] - r["final_val_f1"] for r in rs),
                "tail_std": statistics.fmean(r["val_f1_tail_std"] for r in rs),
                "best_epoch": statistics.fmean(r["best_epoch"] for r in rs),
                "epochs": statistics.fmean(r["epochs"] for r in rs),
                "ips": statistics.fmean(r["images_per_s"] for r in rs),
                "wall": sum(r["wall_s"] for r in rs),
            }
        )
    return sorted(rows, key=lambda r: -r["f1"])


def _comparisons(rows: list[dict], t) -> list[str]:
    """Which runs overfit least and most, which are steadiest, which converge first, which train fastest."""

    def extremes(key: str, field: str, names: tuple[str, str, str, str]) -> str:
        ordered = sorted(rows, key=lambda r: r[field])
        a, av, b, bv = names
        return t(key, **{a: ordered[0]["run"], av: ordered[0][field], b: ordered[-1]["run"], bv: ordered[-1][field]})

    by_speed = sorted(rows, key=lambda r: -r["ips"])
    return [
        extremes("c.overfitting", "final_gap", ("low", "low_gap", "high", "high_gap")),
        extremes("c.stability", "tail_std", ("steady", "steady_std", "erratic", "erratic_std")),
        extremes("c.convergence", "best_epoch", ("early", "early_epoch", "late", "late_epoch")),
        t(
            "c.speed",
            fast=by_speed[0]["run"],
            fast_ips=by_speed[0]["ips"],
            slow=by_speed[-1]["run"],
            slow_ips=by_speed[-1]["ips"],
            wall=sum(r["wall"] for r in rows),
        ),
    ]


def conclusions(rows: list[dict], lang: str = "en") -> list[str]:
    """Sentences computed from the aggregated figures; nothing is claimed that the numbers do not show."""

    def t(key: str, **values) -> str:
        return text(lang, key, **values)

    if not rows:
        return [t("c.no_run")]
    best = rows[0]
    n = best["n"]
    score = _fmt(best["f1"], best["f1_std"], n)
    out = [
        t("c.best_seeds", run=best["run"], score=score, n=n) if n > 1 else t("c.best_one", run=best["run"], score=score)
    ]
    if len(rows) > 1:
        second = rows[1]
        margin = best["f1"] - second["f1"]
        if n > 1:
            noise = math.sqrt(best["f1_std"] ** 2 / n + second["f1_std"] ** 2 / second["n"])
            verdict = t("c.noise" if margin < 2 * noise else "c.separated")
            out.append(t("c.margin_seeds", second=second["run"], margin=margin, verdict=verdict, noise=noise))
        else:
            noise = max(best["tail_std"], second["tail_std"])
            verdict = t("c.below_spread" if margin < noise else "c.above_spread")
            out.append(t("c.margin_one", second=second["run"], margin=margin, verdict=verdict, noise=noise))
        worst = rows[-1]
        out.append(t("c.worst", run=worst["run"], f1=worst["f1"], drop=best["f1"] - worst["f1"]))
    # Runs that learned next to nothing (a collapsed run predicts one class) are "stable" and "not overfitting"
    # in a useless way: the remaining comparisons leave them out, and say so.
    learned = [r for r in rows if r["f1"] >= 0.5 * best["f1"]]
    failed = [r["run"] for r in rows if r not in learned]
    if failed:
        out.append(t("c.left_out", runs=", ".join(failed)))
    out += _comparisons(learned, t)
    return out


RESULT_COLUMNS = ("run", "best_val_f1", "val_acc", "best_epoch", "epochs", "gap", "tail_std", "images_per_s", "wall_s")


def results_table(rows: list[dict], lang: str = "en") -> tuple[list[str], list[list]]:
    header = [text(lang, f"col.{c}") for c in RESULT_COLUMNS]
    body = [
        [
            r["run"],
            _fmt(r["f1"], r["f1_std"], r["n"]),
            f"{r['acc']:.4f}",
            f"{r['best_epoch']:.0f}",
            f"{r['epochs']:.0f}",
            f"{r['final_gap']:+.3f}",
            f"{r['tail_std']:.4f}",
            f"{r['ips']:.0f}",
            f"{r['wall']:.0f}",
        ]
        for r in rows
    ]
    return header, body


def _overlay(results: list[dict], path: Path, title: str) -> None:
    from cnnlab.reporting.figures import overlay

    first: dict[str, list[dict]] = {}
    for r in results:  # with several seeds, draw the first seed of each run
        if r["run"] not in first:
            first[r["run"]] = read_history(Path(r["out"]) / "history.csv")
    overlay(first, path, title=title)


def add_study(doc: Doc, study, results: list[dict], folder: Path, level: int = 2, lang: str = "en") -> list[dict]:
    rows = aggregate(results)
    plot = folder / "overlay.png"
    _overlay(results, plot, title=study.name)
    # A built-in study's question is in the catalogue; a study file's own question is shown as written.
    question = study.questions.get(lang, study.question)
    if question:
        doc.p(question)
    doc.table(*results_table(rows, lang))
    doc.image(plot, text(lang, "study.overlay_alt", study=study.name))
    doc.h(text(lang, "study.conclusion"), level + 1)
    doc.bullets(conclusions(rows, lang))
    return rows


def _header(doc: Doc, results: list[dict], lang: str = "en") -> None:
    cfg = read_config(Path(results[0]["out"]))
    doc.p(
        text(
            lang,
            "study.header",
            path=cfg.data.path,
            date=time.strftime("%Y-%m-%d"),
            machine=machine(),
            fraction=cfg.data.val_fraction,
            seed=cfg.data.split_seed,
        )
    )


def study_report(study, results: list[dict], folder: Path, lang: str = "en") -> tuple[Path, Path]:
    """Write a study's report, report.md and report.html, into `folder` (in `lang`), from `results` (one summary a run);
    -> the two paths."""
    doc = Doc(text(lang, "study.title", name=study.name), lang)
    _header(doc, results, lang)
    add_study(doc, study, results, folder, lang=lang)
    doc.p(text(lang, "study.footer"))
    return doc.write(folder)


def assignment_report(summary: dict, folder: Path, studies: dict, lang: str = "en") -> tuple[Path, Path]:
    """Write the assignment's report (report.md, report.html) into `folder`, in `lang`: each stage's table, plots
    and winner, then the final test. `summary`: run_assignment's; `studies`: the Study of each stage, by name.
    -> the two paths."""

    def t(key: str, **values) -> str:
        return text(lang, key, **values)

    doc = Doc(t("assignment.title"), lang)
    _header(doc, summary["stages"][0]["results"], lang)
    for i, stage in enumerate(summary["stages"], 1):
        doc.h(f"{i}. {stage['study']}")
        add_study(doc, studies[stage["study"]], stage["results"], folder / stage["study"], level=2, lang=lang)
        doc.p(t("assignment.carried", winner=stage["winner"], f1=stage["mean_val_f1"]))
    doc.h(t("assignment.final"))
    if summary["tests"]:
        doc.table(
            [t(f"col.{c}") for c in ("run", "seed", "test_f1", "test_acc", "evaluation")],
            [
                [t["run"], t["seed"], f"{t['macro_f1']:.4f}", f"{t['accuracy']:.4f}", t["evaluation_number"]]
                for t in summary["tests"]
            ],
        )
        classes = list(summary["tests"][0]["per_class"])
        doc.table(
            [t(f"col.{c}") for c in ("class", "test_recall", "test_precision")],
            [
                [
                    c,
                    f"{statistics.fmean(t['per_class'][c]['recall'] for t in summary['tests']):.3f}",
                    f"{statistics.fmean(t['per_class'][c]['precision'] for t in summary['tests']):.3f}",
                ]
                for c in classes
            ],
        )
        val = summary["stages"][-1]["mean_val_f1"]
        test = statistics.fmean(t["macro_f1"] for t in summary["tests"])
        doc.p(t("assignment.gap", val=val, test=test, gap=val - test))
    else:
        doc.p(t("assignment.no_test"))
    return doc.write(folder)
