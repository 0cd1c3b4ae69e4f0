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
from cnnlab.runs import read_config, read_history


class Doc:
    def __init__(self, title: str):
        self.title = title
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
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title><style>"
               "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
               "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
               "img{max-width:100%}code{background:#f3f3f3;padding:1px 4px}</style></head><body>",
               f"<h1>{e(self.title)}</h1>"]
        for kind, b in self.blocks:
            if kind == "h":
                out.append(f"<h{b[0]}>{e(b[1])}</h{b[0]}>")
            elif kind == "p":
                out.append(f"<p>{_inline(b)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b) + "</ul>")
            elif kind == "table":
                header, rows = b
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>"
                                     for r in rows) + "</table>")
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
        rows.append({
            "run": run, "n": len(rs), "f1": f1[0], "f1_std": f1[1],
            "acc": statistics.fmean(r["best_val_acc"] for r in rs),
            "gap": statistics.fmean(r["best_train_f1"] - r["best_val_f1"] for r in rs),
            "final_gap": statistics.fmean(r["final_train_f1"] - r["final_val_f1"] for r in rs),
            "tail_std": statistics.fmean(r["val_f1_tail_std"] for r in rs),
            "best_epoch": statistics.fmean(r["best_epoch"] for r in rs),
            "epochs": statistics.fmean(r["epochs"] for r in rs),
            "ips": statistics.fmean(r["images_per_s"] for r in rs),
            "wall": sum(r["wall_s"] for r in rs),
        })
    return sorted(rows, key=lambda r: -r["f1"])


def conclusions(rows: list[dict]) -> list[str]:
    """Sentences computed from the aggregated figures; nothing is claimed that the numbers do not show."""
    if not rows:
        return ["No run finished."]
    best = rows[0]
    n = best["n"]
    out = [f"Best by validation macro-F1: **{best['run']}** with {_fmt(best['f1'], best['f1_std'], n)}"
           + (f" (mean over {n} seeds)." if n > 1 else " (one seed).")]
    if len(rows) > 1:
        second = rows[1]
        margin = best["f1"] - second["f1"]
        if n > 1:
            noise = math.sqrt(best["f1_std"] ** 2 / n + second["f1_std"] ** 2 / second["n"])
            verdict = ("within the noise: the seeds' spread does not separate them" if margin < 2 * noise
                       else "larger than twice the standard error over seeds")
            out.append(f"Its margin over {second['run']} is {margin:.4f}, {verdict} (standard error {noise:.4f}).")
        else:
            noise = max(best["tail_std"], second["tail_std"])
            verdict = ("smaller than the epoch-to-epoch spread of validation F1, so one seed cannot tell them "
                       "apart; rerun with --seeds 3" if margin < noise
                       else "larger than the epoch-to-epoch spread of validation F1 over the last 10 epochs")
            out.append(f"Its margin over {second['run']} is {margin:.4f}, {verdict} ({noise:.4f}).")
        worst = rows[-1]
        out.append(f"Worst: {worst['run']} at {worst['f1']:.4f}, {best['f1'] - worst['f1']:.4f} below the best.")
    # Runs that learned next to nothing (a collapsed run predicts one class) are "stable" and "not overfitting"
    # in a useless way: the remaining comparisons leave them out, and say so.
    learned = [r for r in rows if r["f1"] >= 0.5 * best["f1"]]
    failed = [r["run"] for r in rows if r not in learned]
    if failed:
        out.append(f"Left out of the comparisons below, at less than half the best score: {', '.join(failed)}.")
    rows = learned
    by_gap = sorted(rows, key=lambda r: r["final_gap"])
    out.append(f"Overfitting (train minus validation macro-F1 at the last epoch): smallest for "
               f"{by_gap[0]['run']} ({by_gap[0]['final_gap']:+.3f}), largest for {by_gap[-1]['run']} "
               f"({by_gap[-1]['final_gap']:+.3f}).")
    by_tail = sorted(rows, key=lambda r: r["tail_std"])
    out.append(f"Stability (std of validation macro-F1 over the last 10 epochs): steadiest {by_tail[0]['run']} "
               f"({by_tail[0]['tail_std']:.4f}), most erratic {by_tail[-1]['run']} ({by_tail[-1]['tail_std']:.4f}).")
    by_epoch = sorted(rows, key=lambda r: r["best_epoch"])
    out.append(f"Convergence: {by_epoch[0]['run']} peaked earliest (epoch {by_epoch[0]['best_epoch']:.0f}), "
               f"{by_epoch[-1]['run']} latest (epoch {by_epoch[-1]['best_epoch']:.0f}).")
    by_speed = sorted(rows, key=lambda r: -r["ips"])
    out.append(f"Speed: {by_speed[0]['run']} fastest ({by_speed[0]['ips']:.0f} images/s), {by_speed[-1]['run']} "
               f"slowest ({by_speed[-1]['ips']:.0f} images/s); the study took {sum(r['wall'] for r in rows):.0f} s "
               "of training in all.")
    return out


def results_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    header = ["run", "best val macro-F1", "val acc", "best epoch", "epochs", "gap (last epoch)", "tail std",
              "images/s", "wall s"]
    body = [[r["run"], _fmt(r["f1"], r["f1_std"], r["n"]), f"{r['acc']:.4f}", f"{r['best_epoch']:.0f}",
             f"{r['epochs']:.0f}", f"{r['final_gap']:+.3f}", f"{r['tail_std']:.4f}", f"{r['ips']:.0f}",
             f"{r['wall']:.0f}"] for r in rows]
    return header, body


def _overlay(results: list[dict], path: Path, title: str) -> None:
    from cnnlab.plots import overlay

    first: dict[str, list[dict]] = {}
    for r in results:  # with several seeds, draw the first seed of each run
        if r["run"] not in first:
            first[r["run"]] = read_history(Path(r["out"]) / "history.csv")
    overlay(first, path, title=title)


def add_study(doc: Doc, study, results: list[dict], folder: Path, level: int = 2) -> list[dict]:
    rows = aggregate(results)
    plot = folder / "overlay.png"
    _overlay(results, plot, title=study.name)
    if study.question:
        doc.p(study.question)
    doc.table(*results_table(rows))
    doc.image(plot, f"{study.name}: loss and macro-F1 per epoch, train solid, validation dashed")
    doc.h("Conclusion", level + 1)
    doc.bullets(conclusions(rows))
    return rows


def _header(doc: Doc, results: list[dict]) -> None:
    cfg = read_config(Path(results[0]["out"]))
    doc.p(f"Data `{cfg.data.path}`; {time.strftime('%Y-%m-%d')}; machine: {machine()}. Validation is a "
          f"{cfg.data.val_fraction:.0%} stratified split of the training folder (seed {cfg.data.split_seed}); "
          "every choice below uses validation macro-F1 only.")


def study_report(study, results: list[dict], folder: Path) -> tuple[Path, Path]:
    doc = Doc(f"Study: {study.name}")
    _header(doc, results)
    add_study(doc, study, results, folder)
    doc.p("Per-run figures: `summary.csv`; each run folder holds its config.toml, history.csv and curves.png.")
    return doc.write(folder)


def assignment_report(summary: dict, folder: Path, studies: dict) -> tuple[Path, Path]:
    """`studies`: the Study of each stage, by name."""
    doc = Doc("The assignment, end to end")
    _header(doc, summary["stages"][0]["results"])
    for i, stage in enumerate(summary["stages"], 1):
        doc.h(f"{i}. {stage['study']}")
        add_study(doc, studies[stage["study"]], stage["results"], folder / stage["study"], level=2)
        doc.p(f"Carried forward: **{stage['winner']}** (validation macro-F1 {stage['mean_val_f1']:.4f}).")
    doc.h("Final choice, scored once on the test split")
    if summary["tests"]:
        doc.table(["run", "seed", "test macro-F1", "test accuracy", "evaluation #"],
                  [[t["run"], t["seed"], f"{t['macro_f1']:.4f}", f"{t['accuracy']:.4f}", t["evaluation_number"]]
                   for t in summary["tests"]])
        classes = list(summary["tests"][0]["per_class"])
        doc.table(["class", "test recall", "test precision"],
                  [[c, f"{statistics.fmean(t['per_class'][c]['recall'] for t in summary['tests']):.3f}",
                    f"{statistics.fmean(t['per_class'][c]['precision'] for t in summary['tests']):.3f}"]
                   for c in classes])
        val = summary["stages"][-1]["mean_val_f1"]
        test = statistics.fmean(t["macro_f1"] for t in summary["tests"])
        doc.p(f"Validation macro-F1 {val:.4f} against test macro-F1 {test:.4f}: a gap of {val - test:+.4f}. "
              "The test split was used for this score only, after every choice was made.")
    else:
        doc.p("The dataset has no test split: nothing was scored on test.")
    return doc.write(folder)
