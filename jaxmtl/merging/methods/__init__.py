"""Data-free model merging methods over pytrees.

Every method takes ``(pretrained, finetuned, *, task_vectors=None, exclude=None, ...options)``
and returns a pytree with the pretrained structure, shapes and dtypes. See ``docs/merging.md``
for the options and the reference implementation each option value reproduces.
"""

from jaxmtl.merging.methods.consensus import consensus, tall_masks
from jaxmtl.merging.methods.linear import task_arithmetic, weight_average
from jaxmtl.merging.methods.sparse import (breadcrumbs, dare, della, elect_and_merge,
                                           rescale_masked, ties, topk_masks)
from jaxmtl.merging.methods.svd import iso_c, iso_cts, tsv
from jaxmtl.merging.methods.topk import count_greater, global_topk_threshold

__all__ = [
  "weight_average", "task_arithmetic", "ties", "dare", "breadcrumbs", "della", "consensus",
  "tall_masks", "tsv", "iso_c", "iso_cts", "global_topk_threshold", "count_greater",
  "topk_masks", "elect_and_merge", "rescale_masked",
]
