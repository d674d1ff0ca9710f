"""srsgd-train: Scheduled Restart SGD, its paper recipes, and a resumable training tool.

``from srsgd_train import SRSGD`` imports the optimizer without the training stack.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `srsgd-train --help` must not import torch
    if name in {"SRSGD", "NASGD", "ARSGD", "RestartPlan", "RestartSchedule"}:
        from srsgd_train import optim

        return getattr(optim, name)
    raise AttributeError(name)


__all__ = ["SRSGD", "NASGD", "ARSGD", "RestartPlan", "RestartSchedule", "__version__"]
