"""jaxmtl.data: datasets by name (embedded TFDS builders or prepared TFDS datasets), global
batches on a jax Mesh with checkpointable state, and task mixtures. See docs/data.md."""
from jaxmtl.data.batches import BatchIterator, iterate_numpy, local_rows
from jaxmtl.data.mixture import TaskMixture, mixture_probabilities, task_for_step
from jaxmtl.data.sources import (EmbeddedInfo, dataset_info, default_data_dir, embedded_names,
                                 get_builder, get_source)

__all__ = [
    "BatchIterator", "EmbeddedInfo", "TaskMixture", "dataset_info", "default_data_dir",
    "embedded_names", "get_builder", "get_source", "iterate_numpy", "local_rows",
    "mixture_probabilities", "task_for_step",
]
