"""Training: everything one run needs, from a checked config to a run folder. The config checks
(`check_config`), the run's data (`prepare_run_data`), batching and input presets, augmentation, the model registry
(`MODELS`, `build`, `register`), optimizers and schedulers (`Optimization`), where and how the model runs
(`Engine`), the epoch loops, metrics, the run folder, and the `Trainer` with `fit` (a new run) and `resume`.

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "check_config": "checks",
    "make_config": "checks",
    "RunData": "preparation",
    "prepare_run_data": "preparation",
    "split_dataset": "preparation",
    "epoch_indices": "batching",
    "batches": "batching",
    "IMBALANCE_MODES": "batching",
    "EvalInput": "presets",
    "TrainInput": "presets",
    "Augmenter": "augment",
    "mixup_draw": "augment",
    "MODELS": "models",
    "build": "models",
    "register": "models",
    "cam_layer": "models",
    "Optimization": "optimization",
    "OPTIMIZERS": "optimization",
    "SCHEDULERS": "optimization",
    "class_weights": "optimization",
    "Engine": "engine",
    "make_engine": "engine",
    "train_one_epoch": "loops",
    "validate_epoch": "loops",
    "predict_logits": "loops",
    "confusion": "metrics",
    "scores": "metrics",
    "recalls": "metrics",
    "read_config": "run_folder",
    "read_history": "run_folder",
    "load_checkpoint": "run_folder",
    "summarize_history": "run_folder",
    "is_run": "run_folder",
    "RunWriter": "run_folder",
    "Trainer": "trainer",
    "fit": "trainer",
    "resume": "trainer",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
