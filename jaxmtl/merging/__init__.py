"""Model merging over pytrees: task vectors and data-free merging methods.

Public API (DESIGN.md contract): :func:`task_vectors` and the methods ``weight_average``,
``task_arithmetic``, ``ties``, ``dare``, ``breadcrumbs``, ``della``, ``consensus``, ``tsv``,
``iso_c``, ``iso_cts``, and ``adamerging`` (learned coefficients, see
:mod:`jaxmtl.merging.adamerging`); each takes the pretrained pytree and a sequence of finetuned
pytrees (or ``task_vectors=``) plus keyword options and returns a merged pytree of the same
structure, shapes and dtypes. Leaves left unmerged are chosen by path regex (``exclude=``).
"""

from jaxmtl.merging.adamerging import adamerging, adamerging_fit
from jaxmtl.merging.methods import (breadcrumbs, consensus, dare, della, global_topk_threshold,
                                    iso_c, iso_cts, tall_masks, task_arithmetic, ties, tsv,
                                    weight_average)
from jaxmtl.merging.task_vectors import (add_task_vectors, apply_task_vector, excluded_mask,
                                         leaf_paths, path_str, scale_task_vector,
                                         task_vectors)

__all__ = [
  "task_vectors", "add_task_vectors", "scale_task_vector", "apply_task_vector", "path_str",
  "leaf_paths", "excluded_mask", "weight_average", "task_arithmetic", "ties", "dare",
  "breadcrumbs", "della", "consensus", "tall_masks", "tsv", "iso_c", "iso_cts",
  "global_topk_threshold", "adamerging", "adamerging_fit",
]
