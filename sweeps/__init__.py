"""Sweeps of DeepHoyer trials: specs (pydantic), Ray Tune execution, Optuna search, MLflow records.

Import submodules directly (``sweeps.runner``, ``sweeps.spec``); this package imports nothing
heavy so that ``hoyersweep train`` stays torch-only.
"""
