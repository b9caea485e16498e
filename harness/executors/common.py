"""What every executor does in the driver before trials start."""

from __future__ import annotations

import logging

from harness.data import Dataset, load_dataset
from harness.suite import TrialSpec

log = logging.getLogger(__name__)


def dataset_key(spec: TrialSpec) -> str:
    return spec.dataset.model_dump_json()


def prepare(specs: list[TrialSpec], device: str = "auto") -> dict[str, Dataset]:
    """Load each dataset once (trials share it read-only) and train or load the evaluators the trials need, so that
    concurrent trials find them cached instead of each training its own."""
    from harness.metrics import prepare_evaluators
    from harness.runtime import resolve_device

    datasets: dict[str, Dataset] = {}
    for spec in specs:
        key = dataset_key(spec)
        if key not in datasets:
            datasets[key] = load_dataset(spec.dataset)
    if specs:
        prepare_evaluators([(s.evaluation, datasets[dataset_key(s)]) for s in specs],
                           resolve_device(device, specs[0].resources.gpu))
    return datasets
