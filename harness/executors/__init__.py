"""Executors decide *where* trials run; every one of them calls :func:`harness.trial.run_trial`.

``ray`` (the default) is imported lazily: in-process runs and validation do not pay for importing Ray.
"""

from harness.executors.inprocess import run_inprocess

EXECUTORS = ("ray", "inprocess")


def run_ray(*args, **kwargs):
    from harness.executors.ray_tune import run_ray as _run_ray

    return _run_ray(*args, **kwargs)


__all__ = ["EXECUTORS", "run_inprocess", "run_ray"]
