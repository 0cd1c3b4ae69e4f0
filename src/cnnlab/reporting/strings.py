"""Every human-readable sentence of a report (study, assignment, cross-validation), in each language cnnlab
writes: format templates keyed by short ids. Numbers are formatted by the templates themselves, with the same
format in every language, so a Russian report shows exactly the figures of the English one; run, class and
study names are never translated. Metric names (macro-F1, accuracy, precision, recall) stay as they are."""

from __future__ import annotations

from cnnlab.errors import nearest

LANGS = ("en", "ru")

EN = {
    # study and assignment reports
    "study.title": "Study: {name}",
    "study.header": "Data `{path}`; {date}; machine: {machine}. Validation is a {fraction:.0%} stratified split of "
    "the training folder (seed {seed}); every choice below uses validation macro-F1 only.",
    "study.footer": "Per-run figures: `summary.csv`; each run folder holds its config.toml, history.csv and "
    "curves.png.",
    "study.overlay_alt": "{study}: loss and macro-F1 per epoch, train solid, validation dashed",
    "study.conclusion": "Conclusion",
    "assignment.title": "The assignment, end to end",
    "assignment.carried": "Carried forward: **{winner}** (validation macro-F1 {f1:.4f}).",
    "assignment.final": "Final choice, scored once on the test split",
    "assignment.gap": "Validation macro-F1 {val:.4f} against test macro-F1 {test:.4f}: a gap of {gap:+.4f}. The "
    "test split was used for this score only, after every choice was made.",
    "assignment.no_test": "The dataset has no test split: nothing was scored on test.",
    # conclusions
    "c.no_run": "No run finished.",
    "c.best_seeds": "Best by validation macro-F1: **{run}** with {score} (mean over {n} seeds).",
    "c.best_one": "Best by validation macro-F1: **{run}** with {score} (one seed).",
    "c.margin_seeds": "Its margin over {second} is {margin:.4f}, {verdict} (standard error {noise:.4f}).",
    "c.noise": "within the noise: the seeds' spread does not separate them",
    "c.separated": "larger than twice the standard error over seeds",
    "c.margin_one": "Its margin over {second} is {margin:.4f}, {verdict} ({noise:.4f}).",
    "c.below_spread": "smaller than the epoch-to-epoch spread of validation F1, so one seed cannot tell them apart; "
    "rerun with --seeds 3",
    "c.above_spread": "larger than the epoch-to-epoch spread of validation F1 over the last 10 epochs",
    "c.worst": "Worst: {run} at {f1:.4f}, {drop:.4f} below the best.",
    "c.left_out": "Left out of the comparisons below, at less than half the best score: {runs}.",
    "c.overfitting": "Overfitting (train minus validation macro-F1 at the last epoch): smallest for {low} "
    "({low_gap:+.3f}), largest for {high} ({high_gap:+.3f}).",
    "c.stability": "Stability (std of validation macro-F1 over the last 10 epochs): steadiest {steady} "
    "({steady_std:.4f}), most erratic {erratic} ({erratic_std:.4f}).",
    "c.convergence": "Convergence: {early} peaked earliest (epoch {early_epoch:.0f}), {late} latest "
    "(epoch {late_epoch:.0f}).",
    "c.speed": "Speed: {fast} fastest ({fast_ips:.0f} images/s), {slow} slowest ({slow_ips:.0f} images/s); the "
    "study took {wall:.0f} s of training in all.",
    # table headers
    "col.run": "run",
    "col.best_val_f1": "best val macro-F1",
    "col.val_acc": "val acc",
    "col.best_epoch": "best epoch",
    "col.epochs": "epochs",
    "col.gap": "gap (last epoch)",
    "col.tail_std": "tail std",
    "col.images_per_s": "images/s",
    "col.wall_s": "wall s",
    "col.seed": "seed",
    "col.test_f1": "test macro-F1",
    "col.test_acc": "test accuracy",
    "col.evaluation": "evaluation #",
    "col.class": "class",
    "col.test_recall": "test recall",
    "col.test_precision": "test precision",
    "col.fold": "fold",
    "col.images": "images",
    "col.accuracy": "accuracy",
    "col.macro_f1": "macro-F1",
    "col.recall": "recall {cls}",
    "col.val_f1": "val macro-F1",
    "col.minutes": "minutes",
    "col.pointing": "pointing game (test)",
    # cross-validation report
    "cv.title": "Cross-validation on the data set's folds",
    "cv.intro": "`{command}`; {date}; machine: {machine}. Each fold is scored once by the run trained on the other "
    "folds; that run validated on one of them, never on the scored fold.",
    "cv.scores": "**Accuracy {acc:.4f} ± {acc_std:.4f}, macro-F1 {f1:.4f} ± {f1_std:.4f}** (mean ± std over "
    "{n} folds).",
    "cv.confusion_alt": "confusion matrix summed over the folds",
    "cv.curves_alt": "loss and macro-F1 per epoch of every fold's run",
    # search (cnnlab tune) report
    "col.trial": "trial",
    "col.state": "state",
    "tune.title": "Search: best settings by validation macro-F1",
    "tune.intro": "Data `{path}`; {date}; machine: {machine}; {n} trials. Each trial is a run trained on the "
    "training split and scored on validation only; the test split was never read.",
    "tune.counts": "{complete} trials finished, {pruned} pruned (stopped when their validation macro-F1 lagged the "
    "finished trials' at the same epoch); {epochs} epochs trained in all, {minutes:.1f} minutes of training.",
    "tune.best": "Best: **trial {trial}**, validation macro-F1 {f1:.4f} after {epochs} epochs, with {settings}. "
    "Its config is `best.toml`: `cnnlab train --config best.toml --out R` trains it again.",
    "tune.no_best": "No trial finished: every trial was pruned or none ran.",
    "tune.state.complete": "finished",
    "tune.state.pruned": "pruned",
    "tune.state.running": "running",
    "tune.state.fail": "failed",
    "tune.state.waiting": "waiting",
    "tune.history_alt": "best validation macro-F1 of each trial in trial order, pruned trials marked, the best so far",
    "tune.curves_alt": "validation macro-F1 per epoch of every trial, pruned trials dashed",
    "tune.importance": "Which settings mattered",
    "tune.importance_alt": "importance of each searched field (Optuna's evaluator over the finished trials)",
    "tune.footer": "Every trial's figures: `trials.csv`; each run folder under `trials/` holds its config.toml and "
    "history.csv; Optuna's storage is `optuna.db`.",
    # the built-in studies' questions
    "question.regularization": "What do BatchNorm and Dropout do to the assignment's CNN?",
    "question.optimizers": "Which torch.optim optimizer trains the chosen network best at the same learning rate?",
    "question.lr": "Which learning rate suits the chosen optimizer?",
    "question.overfitting": "Do a learning-rate scheduler and label smoothing reduce overfitting?",
    "question.imbalance": "How should class imbalance be handled?",
    "question.architecture": "What do convolutions, size-agnostic pooling and residual blocks buy over a fully "
    "connected net?",
    "question.activations": "Does the activation function matter for the assignment's CNN?",
    "question.sweep": "Which value of {key} works best?",
}

RU = {
    "study.title": "Исследование: {name}",
    "study.header": "Данные: `{path}`; {date}; машина: {machine}. Валидационная выборка: {fraction:.0%} обучающей "
    "папки, стратифицированное разбиение (сид {seed}); все решения ниже приняты только по macro-F1 "
    "на валидации.",
    "study.footer": "Показатели каждого запуска: `summary.csv`; в папке каждого запуска лежат его config.toml, "
    "history.csv и curves.png.",
    "study.overlay_alt": "{study}: функция потерь и macro-F1 по эпохам; обучение — сплошные линии, валидация — пунктир",
    "study.conclusion": "Выводы",
    "assignment.title": "Задание целиком: все этапы по порядку",
    "assignment.carried": "На следующий этап переходит **{winner}** (macro-F1 на валидации {f1:.4f}).",
    "assignment.final": "Итоговый выбор: однократная оценка на тестовой выборке",
    "assignment.gap": "На валидации macro-F1 — {val:.4f}, на тесте — {test:.4f}: разрыв {gap:+.4f}. Тестовая выборка "
    "использована только для этой оценки, после того как все решения были приняты.",
    "assignment.no_test": "В наборе данных нет тестовой выборки: на тесте ничего не оценивалось.",
    "c.no_run": "Ни один запуск не завершился.",
    "c.best_seeds": "Лучший по macro-F1 на валидации: **{run}**, {score} (среднее по сидам, n = {n}).",
    "c.best_one": "Лучший по macro-F1 на валидации: **{run}**, {score} (один сид).",
    "c.margin_seeds": "Его отрыв от {second} составляет {margin:.4f}: {verdict} (стандартная ошибка {noise:.4f}).",
    "c.noise": "это в пределах шума — разброс по сидам не позволяет их различить",
    "c.separated": "это больше удвоенной стандартной ошибки по сидам",
    "c.margin_one": "Его отрыв от {second} составляет {margin:.4f}: {verdict} ({noise:.4f}).",
    "c.below_spread": "это меньше колебаний F1 на валидации от эпохи к эпохе, поэтому по одному сиду их не "
    "различить; перезапустите с --seeds 3",
    "c.above_spread": "это больше колебаний F1 на валидации от эпохи к эпохе за последние 10 эпох",
    "c.worst": "Худший: {run}, {f1:.4f}, на {drop:.4f} ниже лучшего.",
    "c.left_out": "Не участвуют в сравнениях ниже (меньше половины лучшего результата): {runs}.",
    "c.overfitting": "Переобучение (разность macro-F1 на обучающей и валидационной выборках на последней эпохе): "
    "наименьшее у {low} ({low_gap:+.3f}), наибольшее у {high} ({high_gap:+.3f}).",
    "c.stability": "Стабильность (стандартное отклонение macro-F1 на валидации за последние 10 эпох): самый "
    "стабильный — {steady} ({steady_std:.4f}), самый нестабильный — {erratic} ({erratic_std:.4f}).",
    "c.convergence": "Сходимость: {early} раньше всех достиг максимума (эпоха {early_epoch:.0f}), {late} — позже "
    "всех (эпоха {late_epoch:.0f}).",
    "c.speed": "Скорость: быстрее всех {fast} ({fast_ips:.0f} изобр./с), медленнее всех {slow} ({slow_ips:.0f} "
    "изобр./с); всего обучение в исследовании заняло {wall:.0f} с.",
    "col.run": "запуск",
    "col.best_val_f1": "лучший macro-F1 на валидации",
    "col.val_acc": "accuracy на валидации",
    "col.best_epoch": "лучшая эпоха",
    "col.epochs": "эпох",
    "col.gap": "разрыв (последняя эпоха)",
    "col.tail_std": "std за последние 10 эпох",
    "col.images_per_s": "изобр./с",
    "col.wall_s": "время, с",
    "col.seed": "сид",
    "col.test_f1": "macro-F1 на тесте",
    "col.test_acc": "accuracy на тесте",
    "col.evaluation": "№ оценки",
    "col.class": "класс",
    "col.test_recall": "recall на тесте",
    "col.test_precision": "precision на тесте",
    "col.fold": "фолд",
    "col.images": "изображений",
    "col.accuracy": "accuracy",
    "col.macro_f1": "macro-F1",
    "col.recall": "recall {cls}",
    "col.val_f1": "macro-F1 на валидации",
    "col.minutes": "время, мин",
    "col.pointing": "pointing game (тест)",
    "cv.title": "Кросс-валидация по фолдам набора данных",
    "cv.intro": "`{command}`; {date}; машина: {machine}. Каждый фолд оценивается один раз моделью, обученной на "
    "остальных фолдах; валидационной выборкой для неё служил один из этих фолдов, но никогда не "
    "оцениваемый.",
    "cv.scores": "**Accuracy {acc:.4f} ± {acc_std:.4f}, macro-F1 {f1:.4f} ± {f1_std:.4f}** (среднее ± стандартное "
    "отклонение по фолдам, n = {n}).",
    "cv.confusion_alt": "матрица ошибок, просуммированная по всем фолдам",
    "cv.curves_alt": "функция потерь и macro-F1 по эпохам для модели каждого фолда",
    "col.trial": "попытка",
    "col.state": "состояние",
    "tune.title": "Поиск: лучшие настройки по macro-F1 на валидации",
    "tune.intro": "Данные: `{path}`; {date}; машина: {machine}; попыток: {n}. Каждая попытка — запуск, обученный "
    "на обучающей выборке и оценённый только на валидации; тестовая выборка не читалась.",
    "tune.counts": "Завершено попыток: {complete}, остановлено досрочно: {pruned} (их macro-F1 на валидации "
    "отставал от завершённых попыток на той же эпохе); всего обучено эпох: {epochs}, {minutes:.1f} мин обучения.",
    "tune.best": "Лучшая: **попытка {trial}**, macro-F1 на валидации {f1:.4f} после {epochs} эпох, с {settings}. "
    "Её конфигурация — `best.toml`: `cnnlab train --config best.toml --out R` обучает её заново.",
    "tune.no_best": "Ни одна попытка не завершилась: все остановлены досрочно или не запускались.",
    "tune.state.complete": "завершена",
    "tune.state.pruned": "остановлена",
    "tune.state.running": "идёт",
    "tune.state.fail": "ошибка",
    "tune.state.waiting": "ожидает",
    "tune.history_alt": "лучший macro-F1 на валидации каждой попытки по порядку, остановленные отмечены, лучший на "
    "данный момент",
    "tune.curves_alt": "macro-F1 на валидации по эпохам для каждой попытки, остановленные — пунктиром",
    "tune.importance": "Какие настройки важны",
    "tune.importance_alt": "важность каждого параметра поиска (оценка Optuna по завершённым попыткам)",
    "tune.footer": "Показатели каждой попытки: `trials.csv`; в каждой папке в `trials/` лежат её config.toml и "
    "history.csv; хранилище Optuna — `optuna.db`.",
    "question.regularization": "Как BatchNorm и Dropout влияют на CNN из задания?",
    "question.optimizers": "Какой оптимизатор из torch.optim лучше всего обучает выбранную сеть при одной и той же "
    "скорости обучения?",
    "question.lr": "Какая скорость обучения лучше всего подходит выбранному оптимизатору?",
    "question.overfitting": "Уменьшают ли переобучение планировщик скорости обучения и сглаживание меток "
    "(label smoothing)?",
    "question.imbalance": "Как лучше всего учитывать дисбаланс классов?",
    "question.architecture": "Что дают свёртки, пулинг, не зависящий от размера входа, и остаточные блоки по "
    "сравнению с полносвязной сетью?",
    "question.activations": "Важен ли выбор функции активации для CNN из задания?",
    "question.sweep": "Какое значение {key} работает лучше всего?",
}

CATALOGUE: dict[str, dict[str, str]] = {"en": EN, "ru": RU}


def check_lang(lang: str) -> str:
    """`lang` itself if cnnlab writes reports in it; else a UserError that lists the choices."""
    if lang not in CATALOGUE:
        raise nearest(str(lang), LANGS, "report language")
    return lang


def text(lang: str, key: str, /, **values) -> str:
    """The sentence `key` in `lang`, its fields filled from `values`."""
    return CATALOGUE[check_lang(lang)][key].format(**values)


def translations(key: str, /, **values) -> dict[str, str]:
    """The sentence `key` in every language, by language."""
    return {lang: text(lang, key, **values) for lang in LANGS}
