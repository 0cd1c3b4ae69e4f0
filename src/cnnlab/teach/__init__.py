"""Teach: optimizers written from scratch in numpy (SGD, momentum, Nesterov, Adagrad, RMSProp, Adam), run on
2-D test functions with analytic gradients (`functions`), compared (`optimizers`) and drawn (`animation`).

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "Function": "functions",
    "FUNCTIONS": "functions",
    "get_function": "functions",
    "Optimizer": "optimizers",
    "UPDATE_RULES": "optimizers",
    "ASSIGNMENT_OPTIMIZERS": "optimizers",
    "get_optimizer": "optimizers",
    "settings": "optimizers",
    "Trajectory": "optimizers",
    "trajectory": "optimizers",
    "run": "optimizers",
    "gap": "optimizers",
    "summarize_trajectory": "optimizers",
    "best_lr": "optimizers",
    "compare": "optimizers",
    "parse_lr_grid": "optimizers",
    "animate": "animation",
    "animate_all": "animation",
    "plot_paths": "animation",
    "plot_gaps": "animation",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
