"""DeepHoyer training in plain PyTorch: regularizers, models, data, pruning and the trial pipeline.

This package knows torch and nothing of Ray, Optuna or MLflow, so a trial runs anywhere torch does.
"""

from trainables.config import ConfigError, TrialConfig
from trainables.deephoyer import FINAL_METRICS, TrialState, run_trial

__all__ = ["ConfigError", "FINAL_METRICS", "TrialConfig", "TrialState", "run_trial"]
