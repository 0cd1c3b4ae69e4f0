"""Reports in Russian (`--lang ru`): every sentence from the catalogue in cnnlab.strings, the same figures as in
English, summary.csv unchanged, and an unknown language refused before anything trains."""

from __future__ import annotations

import re
import string

import pytest
from conftest import make_shapes, one_line_error, run_cli

from cnnlab.errors import UserError
from cnnlab.reporting import strings
from cnnlab.reporting.strings import CATALOGUE, LANGS, text
from cnnlab.studies.reports import aggregate, conclusions

CYRILLIC = re.compile("[а-яё]", re.IGNORECASE)


def _fields(template: str) -> list[tuple]:
    """The fields of a template with their format: the same in every language, so the figures are the same."""
    return sorted((name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None)


def _numbers(line: str) -> list[str]:
    return re.findall(r"[-+]?\d+(?:\.\d+)?%?", line.replace("F1", ""))


def _conclusion_bullets(md: str) -> list[str]:
    section = md.split("\n### ", 1)[1]
    return [line for line in section.splitlines() if line.startswith("- ")]


def test_every_key_exists_in_every_language_with_the_same_fields():
    assert LANGS == ("en", "ru") and set(CATALOGUE) == set(LANGS)
    keys = set(CATALOGUE["en"])
    for lang in LANGS:
        assert set(CATALOGUE[lang]) == keys, f"{lang}: {set(CATALOGUE[lang]) ^ keys}"
        for key in keys:
            assert CATALOGUE[lang][key].strip(), f"{lang}.{key} is empty"
            assert _fields(CATALOGUE[lang][key]) == _fields(CATALOGUE["en"][key]), f"{lang}.{key}"
    # Russian is translated: only bare metric names are the same in both languages.
    same = {k for k in keys if CATALOGUE["ru"][k] == CATALOGUE["en"][k]}
    assert same <= {"col.accuracy", "col.macro_f1", "col.recall"}, same
    assert all(CYRILLIC.search(v) for k, v in CATALOGUE["ru"].items() if k not in same)


def test_an_unknown_language_is_one_clear_error_before_anything_runs(tmp_path):
    from cnnlab.reporting.reporter import Reporter

    with pytest.raises(UserError, match=r"unknown report language 'fr'.*choose from: en, ru"):
        text("fr", "c.no_run")
    out = tmp_path / "S"
    for lang in ("fr", "de"):  # the language is checked once, where a reporter is made: before anything runs
        with pytest.raises(UserError, match="choose from: en, ru"):
            Reporter(lang=lang)
    assert not out.exists()
    line = one_line_error("study", "regularization", "--data", tmp_path, "--out", out, "--lang", "fr")
    assert "'fr'" in line and "'en', 'ru'" in line and not out.exists()
    line = one_line_error("cv", "--data", tmp_path, "--folds", tmp_path / "folds.csv", "--out", out, "--lang", "fr")
    assert "'fr'" in line and not out.exists()


def test_questions_come_from_the_catalogue_and_a_study_file_keeps_its_own(tmp_path):
    from cnnlab.studies.definitions import STUDIES, load_study, sweep

    lr = STUDIES["lr"]
    assert lr.question == text("en", "question.lr") and lr.questions["ru"] == text("ru", "question.lr")
    assert sweep(lr, "batch_size=8,16").questions == {
        "en": "Which value of batch_size works best?",
        "ru": "Какое значение batch_size работает лучше всего?",
    }
    spec = tmp_path / "mine.toml"
    spec.write_text('question = "tanh or relu?"\n[runs.relu]\nactivation = "relu"\n')
    mine = load_study(spec)
    assert mine.question == "tanh or relu?" and mine.questions == {}


def test_russian_conclusions_carry_the_english_figures():
    base = {
        "best_val_acc": 0.9,
        "best_train_f1": 0.95,
        "final_train_f1": 0.97,
        "final_val_f1": 0.9,
        "val_f1_tail_std": 0.01,
        "best_epoch": 5,
        "epochs": 10,
        "images_per_s": 100.0,
        "wall_s": 10.0,
    }
    results = [{**base, "run": "a", "seed": s, "best_val_f1": v} for s, v in enumerate([0.90, 0.92, 0.88])]
    results += [{**base, "run": "b", "seed": s, "best_val_f1": v} for s, v in enumerate([0.89, 0.91, 0.87])]
    results += [{**base, "run": "c", "seed": s, "best_val_f1": 0.2} for s in range(3)]  # left out: < half
    rows = aggregate(results)
    en, ru = conclusions(rows), conclusions(rows, "ru")
    assert len(en) == len(ru) == 8
    assert ru[0] == "Лучший по macro-F1 на валидации: **a**, 0.9000 ± 0.0200 (среднее по сидам, n = 3)."
    assert "в пределах шума" in ru[1] and "Не участвуют в сравнениях" in ru[3]
    assert [_numbers(s) for s in en] == [_numbers(s) for s in ru]
    assert conclusions([], "ru") == ["Ни один запуск не завершился."]


def test_study_report_in_russian(eclipse, tmp_path):
    out = tmp_path / "S"
    args = ["study", "regularization", "--data", eclipse, "--out", out, "--epochs", 1, "--set", "image_size=32"]
    run_cli(*args, "--lang", "ru")
    md_ru, summary_ru = (out / "report.md").read_text(encoding="utf-8"), (out / "summary.csv").read_bytes()
    page = (out / "report.html").read_bytes().decode("utf-8")  # strict: fails on anything not UTF-8
    assert page.startswith("<!doctype html><html lang='ru'><head><meta charset='utf-8'>")
    assert "Лучший по macro-F1 на валидации" in page and "<table>" in page

    # Russian throughout: the title, the question, the heading, every conclusion; no English sentence left.
    assert md_ru.startswith("# Исследование: regularization\n")
    assert text("ru", "question.regularization") in md_ru and "### Выводы" in md_ru
    bullets = _conclusion_bullets(md_ru)
    assert bullets[0].startswith("- Лучший по macro-F1 на валидации: **")
    assert all(CYRILLIC.search(b) for b in bullets)
    for key, template in CATALOGUE["en"].items():
        if not key.startswith("col."):
            for literal, *_ in string.Formatter().parse(template):
                assert len(literal) < 8 or literal not in md_ru, (key, literal)

    # The same study read back and reported in English (nothing retrains): the same figures, the same summary.
    run_cli(*args)
    md_en = (out / "report.md").read_text(encoding="utf-8")
    assert "Best by validation macro-F1" in md_en and not CYRILLIC.search(md_en)
    assert (out / "summary.csv").read_bytes() == summary_ru
    assert summary_ru.decode().startswith("run,seed,best_val_f1,")

    def table_body(md: str) -> list[str]:
        return [line for line in md.splitlines() if line.startswith("| ") and line[2:3] != "-"][1:]

    assert table_body(md_ru) == table_body(md_en) and len(table_body(md_en)) == 4
    en = _conclusion_bullets(md_en)
    assert len(en) == len(bullets) and [_numbers(b) for b in en] == [_numbers(b) for b in bullets]


def test_cv_report_in_russian(tmp_path):
    import csv

    data = tmp_path / "data"
    make_shapes(data / "images", splits=(("", 6),))
    rows = [
        (str(p.relative_to(data)), p.parent.name, str(i % 3 + 1))
        for i, p in enumerate(sorted((data / "images").rglob("*.png")))
    ]
    with open(data / "folds.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "class", "fold"), *rows])
    out = tmp_path / "cv"
    run_cli(
        "cv",
        "--data",
        data,
        "--folds",
        data / "folds.csv",
        "--out",
        out,
        "--epochs",
        1,
        "--set",
        "model=mlp",
        "--set",
        "image_size=16",
        "--set",
        "batch_size=8",
        "--lang",
        "ru",
    )
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Кросс-валидация по фолдам набора данных\n")
    assert "| фолд | изображений | accuracy | macro-F1 | recall circle |" in md
    assert "(среднее ± стандартное отклонение по фолдам, n = 3)" in md
    assert strings.text("ru", "cv.confusion_alt") in md
    assert "<html lang='ru'>" in (out / "report.html").read_bytes().decode("utf-8")
