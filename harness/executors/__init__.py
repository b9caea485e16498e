"""Executors decide *where* trials run; every one of them calls :func:`harness.trial.run_trial`."""

from harness.executors.inprocess import run_inprocess

EXECUTORS = ("inprocess",)

__all__ = ["EXECUTORS", "run_inprocess"]
