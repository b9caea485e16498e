"""Flat MLflow params: every trial of a suite logs the same keys (the MLflow compare view lines trials up), derived
from the spec before the data are loaded; names made valid for MLflow."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.suite import Suite, TrialSpec

NOT_APPLICABLE = "n/a"  # value of a suite-wide param key a trial's method does not have
_MAX_PARAM_LEN = 6000


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, int, float)):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 1] + "…"


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested dicts → ``prefix.key.sub`` string params; lists and scalars are leaves."""
    if isinstance(value, dict):
        if not value:
            return {prefix: "{}"} if prefix else {}
        out: dict[str, str] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: _param_value(value)}


def _resolved_config(method: str, params: dict[str, Any]) -> dict[str, Any]:
    from harness.registry import METHODS

    return METHODS.get(method).Config(**params).model_dump(mode="json")


def spec_params(spec: TrialSpec) -> dict[str, str]:
    """The params a trial logs before its data are loaded (all derived from the spec)."""
    params = {
        "suite": spec.suite,
        "suite_version": str(spec.suite_version),
        "trial_id": spec.trial_id,
        "method": spec.method,
        "label": spec.label,
        "shots": str(spec.shots),
        "seed": str(spec.seed),
        "split": str(spec.split),  # the class partition (0: the protocol's own)
        "selection": spec.selection,  # "test": a selection trial scored on test images
        "data": spec.data,  # "full": an oracle reference (every training image of the novel classes), never ranked
        "dataset": spec.dataset.name,
        "source": spec.dataset.source,
        "base_classes": _param_value(list(spec.base_classes)),
        "novel_classes": _param_value(list(spec.novel_classes)),
        "eval_images_per_class": _param_value(spec.eval_images_per_class),
        "base_images_per_class": _param_value(spec.base_images_per_class),
    }
    # the flat record every dataset config hashes as (the same keys for every dataset, as before the union)
    record = {k: v for k, v in spec.dataset.hash_record().items() if k not in ("name", "source")}
    params.update(flatten("dataset", record))
    params.update(flatten("budget", spec.budget.model_dump(mode="json")))
    params.update(flatten("evaluation", spec.evaluation.model_dump(mode="json")))
    params.update(flatten("resources", spec.resources.model_dump(mode="json")))
    try:
        params.update(flatten("hp", _resolved_config(spec.method, spec.params)))
    except Exception:  # noqa: BLE001 - an unknown method fails the trial itself; set_config logs what it gets
        pass
    return params


SPLIT_PARAMS = ("data_source", "split_hash", "dataset_fingerprint")


def suite_param_keys(suite: Suite) -> tuple[str, ...]:
    """Every param key any trial of ``suite`` logs: the union over its methods (and shots/seeds)."""
    from harness.suite import trial_spec

    keys: set[str] = set(SPLIT_PARAMS)
    for entry in suite.methods:
        spec = trial_spec(suite, entry, suite.protocol.shots[0], suite.protocol.seeds[0])
        keys.update(spec_params(spec))
        if suite.sweep is not None and suite.sweep.method == entry.display:
            keys.update(f"hp.{k}" for k in suite.sweep.space)
    return tuple(sorted(keys))


_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(key: str) -> str:
    """A valid MLflow metric/param name for ``key`` (``fid/class_5`` stays as it is)."""
    name = _BAD_CHARS.sub("_", str(key))
    name = re.sub(r"/+", "/", name).strip("/ ")
    parts = [p if p not in (".", "..") else p.replace(".", "_") for p in name.split("/")]
    name = "/".join(parts) or "_"
    return name[:250]
