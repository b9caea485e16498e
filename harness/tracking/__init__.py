"""MLflow tracking, written only by the driver: one experiment per suite, one parent run per run directory, one
child run per trial (:mod:`harness.tracking.runs` documents the layout).

Modules: ``uri`` (where the store is, the server health check), ``params`` (flat param keys), ``runs`` (parent and
child runs), ``outbox`` (the driver's writes as replayable operations, kept while a server is unreachable),
``callback`` (the trial callback that feeds a child run), ``ui`` (``harness ui``).
"""

from harness.tracking.callback import TrackingCallback
from harness.tracking.params import NOT_APPLICABLE, SPLIT_PARAMS, flatten, mlflow_key, spec_params, suite_param_keys
from harness.tracking.runs import (
    ERROR_TAG, KIND_TAG, PARENT_TAG, RUN_NAME_TAG, SAMPLES_IMAGE_KEY, STATUS_TAG, TRACKING_FILE, TRIAL_ID_TAG,
    TrackingContext, TrialTracker, child_runs, finish_run_tracking, get_or_create_experiment, iter_children_by_trial,
    log_metrics_version, relocate_store, run_dir_context, start_run_tracking,
)
from harness.tracking.ui import experiment_url, run_dir_store, serve_ui, ui_command
from harness.tracking.uri import (
    ARTIFACTS_DIR, DB_FILE, absolute_local_uri, artifact_location, check_tracking_server, client_for,
    default_tracking_uri, is_local_uri, resolve_tracking_uri,
)

__all__ = [
    "ARTIFACTS_DIR", "DB_FILE", "ERROR_TAG", "KIND_TAG", "NOT_APPLICABLE", "PARENT_TAG", "RUN_NAME_TAG",
    "SAMPLES_IMAGE_KEY", "SPLIT_PARAMS", "STATUS_TAG", "TRACKING_FILE", "TRIAL_ID_TAG", "TrackingCallback",
    "TrackingContext", "TrialTracker", "absolute_local_uri", "artifact_location", "check_tracking_server",
    "child_runs", "client_for", "default_tracking_uri", "experiment_url", "finish_run_tracking",
    "get_or_create_experiment", "is_local_uri", "iter_children_by_trial", "flatten", "log_metrics_version",
    "mlflow_key", "resolve_tracking_uri", "relocate_store", "run_dir_context", "run_dir_store", "serve_ui",
    "spec_params", "start_run_tracking", "suite_param_keys", "ui_command",
]
