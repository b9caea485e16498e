"""A study's scores in MLflow, beside the automatic metrics of the run it was made from.

The suite's parent run gets every method's rate and CI (``study/<study>/<method>/fooling_rate``, ``…_ci_low``,
``…_ci_high``), the real images' rate, the agreement and the rater counts, and ``scores.json`` as an artifact; each
child run of a trial whose samples were shown gets its method's rate (the study's unit is the method: one trial's
few images carry no CI of their own) and, apart, the rate of that trial's own images.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from harness.study.scoring import StudyScores

__all__ = ["log_scores"]


def log_scores(run_dir: Path, scores: StudyScores) -> str:
    """Log ``scores`` to ``run_dir``'s tracked parent and child runs; returns what was logged, in words."""
    from mlflow.entities import Metric

    from harness.tracking import check_tracking_server, client_for, mlflow_key, run_dir_context
    from harness.tracking.runs import child_runs

    context = run_dir_context(run_dir)
    if context is None:
        return f"MLflow: {run_dir} has no tracked parent run; the scores are in the files only"
    check_tracking_server(context.tracking_uri)
    client = client_for(context.tracking_uri)
    now, prefix = int(time.time() * 1000), f"study/{scores.name}"
    score_key = "fooling_rate" if scores.design == "real-vs-fake" else "2afc_error"

    def metrics(values: dict[str, float]) -> list[Metric]:
        return [Metric(mlflow_key(k), float(v), now, 0) for k, v in values.items()
                if v is not None and not math.isnan(float(v))]

    parent: dict[str, float] = {f"{prefix}/raters_kept": scores.raters_kept,
                                f"{prefix}/raters_excluded": len(scores.excluded),
                                f"{prefix}/judgements": scores.judgements_used,
                                f"{prefix}/krippendorff_alpha": scores.alpha, f"{prefix}/fleiss_kappa": scores.kappa,
                                f"{prefix}/catch_accuracy": scores.catch_accuracy}
    by_method = {}
    for r in scores.methods + ([scores.real] if scores.real else []):
        key = f"{prefix}/{'real_images/judged_real' if r is scores.real else r.label + '/' + score_key}"
        parent |= {key: r.rate, f"{key}_ci_low": r.ci_low, f"{key}_ci_high": r.ci_high}
        by_method[r.label] = r
    client.log_batch(context.parent_run_id, metrics=metrics(parent))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"study_{scores.name}.json"
        path.write_text(json.dumps(scores.to_dict(), indent=2, default=str))
        client.log_artifact(context.parent_run_id, str(path), artifact_path="studies")
    children = 0
    for trial_id, info in scores.per_run_trial.items():
        method = by_method.get(info["method"])
        runs = child_runs(client, context, trial_id)
        if not runs or method is None:
            continue
        client.log_batch(runs[0].info.run_id, metrics=metrics({
            f"{prefix}/{score_key}": method.rate, f"{prefix}/{score_key}_ci_low": method.ci_low,
            f"{prefix}/{score_key}_ci_high": method.ci_high, f"{prefix}/trial_{score_key}": info["rate"],
            f"{prefix}/trial_judgements": info["judgements"]}))
        children += 1
    return (f"MLflow: {len(parent)} study metrics on parent run {context.parent_run_id}, method rates on {children} "
            f"child runs ({context.tracking_uri})")
