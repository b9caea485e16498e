"""Executors decide *where* trials run; every one of them calls :func:`harness.trial.run_trial`.

Registered by name like methods and metrics (``harness run --executor NAME``); imported lazily, so in-process runs
and validation do not pay for importing Ray.
"""

from __future__ import annotations

from harness.executors.base import Executor
from harness.registry import Registry

EXECUTORS: Registry[type[Executor]] = Registry("executor", base=Executor)
EXECUTORS.register("ray", "harness.executors.ray_tune:RayExecutor")
EXECUTORS.register("inprocess", "harness.executors.inprocess:InProcessExecutor")


def run_inprocess(*args, **kwargs):
    from harness.executors.inprocess import run_inprocess as _run_inprocess

    return _run_inprocess(*args, **kwargs)


def run_ray(*args, **kwargs):
    from harness.executors.ray_tune import run_ray as _run_ray

    return _run_ray(*args, **kwargs)


__all__ = ["EXECUTORS", "Executor", "run_inprocess", "run_ray"]
