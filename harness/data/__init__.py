"""The data layer: dataset metadata, in-memory loading, and few-shot splits.

* :func:`dataset_info` -- static metadata (class names, image shape, per-class counts) without decoding images;
* :func:`load_dataset` -- the whole dataset as float32 tensors in [0, 1] with a content ``fingerprint``;
* :func:`make_split` -- the :class:`~harness.api.FewShotTask` a method sees plus the evaluator's held-out images.

See :mod:`harness.data.sources` for the files each dataset reads and where they go.
"""

from harness.data.config import DatasetConfig
from harness.data.dataset import Dataset, load_dataset
from harness.data.errors import DataFallbackWarning, DataSourceError
from harness.data.info import DatasetInfo, dataset_info
from harness.data.split import FewShotSplit, make_split

__all__ = [
    "DataFallbackWarning",
    "DataSourceError",
    "Dataset",
    "DatasetConfig",
    "DatasetInfo",
    "FewShotSplit",
    "dataset_info",
    "load_dataset",
    "make_split",
]
