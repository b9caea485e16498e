"""The data layer: dataset metadata, in-memory loading, and few-shot splits.

* :func:`dataset_info` -- static metadata (class names, image shape, per-class counts) without decoding images;
* :func:`load_dataset` -- the whole dataset as float32 tensors in [0, 1] with a content ``fingerprint``;
* :func:`make_split` -- the :class:`~harness.api.FewShotTask` a method sees plus the evaluator's held-out images.

Each dataset is one registered reader (:class:`DatasetReader`, in :data:`harness.registry.DATASETS`) with its own
config class; :data:`DatasetConfig` is their discriminated union on ``name`` and :func:`dataset_config` builds one.
See :mod:`harness.data.readers` for the built-in datasets and :mod:`harness.data.sources` for the files each reads.
"""

from harness.data.base import DatasetConfigBase, DatasetReader
from harness.data.dataset import Dataset, load_dataset
from harness.data.errors import DataFallbackWarning, DataSourceError, ImageDecodeError
from harness.data.info import DatasetInfo, dataset_info
from harness.data.split import FewShotSplit, make_split

# last: building the union imports every registered reader, and readers (plugins too) import the names above
from harness.data.config import DatasetConfig, dataset_config  # noqa: E402

__all__ = [
    "DataFallbackWarning",
    "DataSourceError",
    "Dataset",
    "DatasetConfig",
    "DatasetConfigBase",
    "DatasetReader",
    "DatasetInfo",
    "FewShotSplit",
    "ImageDecodeError",
    "dataset_config",
    "dataset_info",
    "load_dataset",
    "make_split",
]
