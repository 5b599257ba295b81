"""Golden outputs of reference merging implementations for tests/test_merging_methods.py.

Not collected by pytest; never imported by jaxmtl. Run in a scratch venv (see
/work/shared/NOTES.md):

  python -m venv /tmp/ref_merge && /tmp/ref_merge/bin/pip install torch==2.13.0 \
    && /tmp/ref_merge/bin/pip install fusion-bench mergekit
  /tmp/ref_merge/bin/python tests/golden/make_merging_golden.py

Produced with torch 2.13.0+cpu, fusion-bench 0.2.33, mergekit 0.1.5, numpy 2.4.6.

Inputs are float32 (stored); every reference runs on them cast to float64, so the stored
outputs are the references' exact answers for those inputs. The reference functions are called
directly (FusionBench ``ties_merging_utils``, ``tall_mask.utils``, ``TSVM_utils``,
``isotropic_merging.iso_utils``, ``dare.utils``; mergekit ``GeneralizedTaskArithmeticMerge``
and ``sparsify``). Random masks (DARE, DELLA) are taken from numpy and fed to the references by
replacing ``torch.bernoulli`` / ``torch.rand_like`` during the call; the masks are stored so the
JAX side can reuse them.
"""

import pathlib

import numpy as np
import torch

from fusion_bench.method.dare import utils as fb_dare
from fusion_bench.method.isotropic_merging import iso_utils
from fusion_bench.method.tall_mask.utils import generate_task_masks
from fusion_bench.method.task_singular_vector.utils.TSVM_utils import (
  compute_and_sum_svd_mem_reduction)
from fusion_bench.method.ties_merging import ties_merging_utils as tu
from mergekit import sparsify as mk_sparsify
from mergekit.merge_methods.base import TensorGroup
from mergekit.merge_methods.generalized_task_arithmetic import (
  ConsensusMethod, GeneralizedTaskArithmeticMerge)
from mergekit.sparsify import SparsificationMethod

OUT = pathlib.Path(__file__).with_name("merging_golden.npz")
SHAPES = {"a.weight": (16, 12), "b.weight": (10, 14), "b.bias": (10,), "c.conv": (4, 3, 5)}
T = 3
rng = np.random.default_rng(20261123)
store: dict[str, np.ndarray] = {}

pre32 = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
tv32 = [{k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(T)]
ft32 = [{k: (pre32[k] + tv[k]).astype(np.float32) for k in SHAPES} for tv in tv32]
# quantised task vectors: many equal magnitudes and exactly cancelling sums (tie handling)
# (multiples of 1/64: sums are exact in float32 and float64, so cancellations are exact zeros)
tvq32 = [{k: (np.round(rng.standard_normal(s) * 2) / 64).astype(np.float32)
          for k, s in SHAPES.items()} for _ in range(T)]
for k in SHAPES:
  store[f"pre/{k}"] = pre32[k]
  for t in range(T):
    store[f"ft{t}/{k}"] = ft32[t][k]
    store[f"tvq{t}/{k}"] = tvq32[t][k]


def th(d):
  return {k: torch.from_numpy(np.asarray(v)).double() for k, v in d.items()}


PRE = th(pre32)
FT = [th(f) for f in ft32]
TV = [{k: FT[t][k] - PRE[k] for k in SHAPES} for t in range(T)]   # jaxmtl: ft - pre
TVQ = [th(q) for q in tvq32]


def save(name, merged):
  for k in SHAPES:
    store[f"{name}/{k}"] = merged[k].numpy()


def add(pre, delta, lam=1.0):
  return {k: pre[k] + lam * delta[k] for k in SHAPES}


# ------------------------------------------------------------------ weight average / TA
save("weight_average", {k: sum(FT[t][k] for t in range(T)) / T for k in SHAPES})
save("task_arithmetic_0.3", add(PRE, {k: sum(tv[k] for tv in TV) for k in SHAPES}, 0.3))


# ------------------------------------------------------------------ TIES, official (FusionBench)
def ties_official(tvs, density, merge_func, trim="global"):
  if trim == "global":
    flat = torch.vstack([tu.state_dict_to_vector(tv) for tv in tvs])
    merged = tu.ties_merging(flat, reset_thresh=density, merge_func=merge_func)
    return tu.vector_to_state_dict(merged, tvs[0])
  # per tensor ("tensor") or per row ("row"): official topk_values_mask on each piece, then the
  # official sign election and disjoint merge on the trimmed vectors.
  trimmed = []
  for tv in tvs:
    d = {}
    for k in sorted(SHAPES):
      x = tv[k]
      m = x.reshape(1, -1) if trim == "tensor" or x.dim() < 2 else x.reshape(-1, x.shape[-1])
      d[k] = tu.topk_values_mask(m.clone(), K=density)[0].reshape(x.shape)
    trimmed.append(d)
  flat = torch.vstack([tu.state_dict_to_vector(tv) for tv in trimmed])
  signs = tu.resolve_sign(flat)
  merged = tu.disjoint_merge(flat, merge_func, signs)
  return tu.vector_to_state_dict(merged, tvs[0])


save("ties_official_global_dismean", add(PRE, ties_official(TV, 0.2, "dis-mean")))
save("ties_official_global_sum_0.3", add(PRE, ties_official(TV, 0.2, "sum"), 0.3))
save("ties_official_tensor_dismean", add(PRE, ties_official(TV, 0.3, "dis-mean", "tensor")))
save("ties_official_row_dismean", add(PRE, ties_official(TV, 0.3, "dis-mean", "row")))
save("tiesq_official_global_dismean", add(PRE, ties_official(TVQ, 0.2, "dis-mean")))
save("tiesq_official_row_dismean", add(PRE, ties_official(TVQ, 0.25, "dis-mean", "row")))


# ------------------------------------------------------------------ mergekit GTA family
def mergekit(consensus, sparsification, normalize, rescale, lam=1.0, density=1.0, **extra):
  method = GeneralizedTaskArithmeticMerge(
    consensus_method=consensus, sparsification_method=sparsification,
    default_normalize=normalize, default_rescale=rescale, method_name="x",
    method_pretty_name=None, method_reference_url=None)
  params = {"int8_mask": False, "normalize": normalize, "rescale": rescale, "lambda": lam,
            "weight": {i: 1.0 for i in range(1, T + 1)},
            "density": {i: density for i in range(1, T + 1)}}
  for key, val in extra.items():
    params[key] = {i: val for i in range(1, T + 1)}
  out = {}
  for k in SHAPES:
    group = TensorGroup.from_tensors([PRE[k]] + [FT[t][k] for t in range(T)], base_index=0)
    out[k] = method.merge_group(group, **params)
  return out


save("ties_mergekit", mergekit(ConsensusMethod.sum, SparsificationMethod.magnitude, True, False,
                               density=0.3))
save("ties_mergekit_count", mergekit(ConsensusMethod.count, SparsificationMethod.magnitude,
                                     True, False, density=0.3))
save("breadcrumbs_mergekit", mergekit(None, SparsificationMethod.magnitude_outliers, False,
                                      False, lam=0.7, density=0.4, gamma=0.1))
save("breadcrumbs_ties_mergekit", mergekit(ConsensusMethod.sum,
                                           SparsificationMethod.magnitude_outliers, False,
                                           False, density=0.4, gamma=0.1))


# breadcrumbs, row scope: mergekit's magnitude_outliers applied to each last-axis row
def breadcrumbs_rows(tvs, density, gamma, lam):
  out = {}
  for k in SHAPES:
    acc = 0
    for tv in tvs:
      x = tv[k]
      r = x.reshape(1, -1) if x.dim() < 2 else x.reshape(-1, x.shape[-1])
      acc = acc + torch.stack([mk_sparsify.magnitude_outliers(row, density, gamma=gamma)
                               for row in r]).reshape(x.shape)
    out[k] = PRE[k] + lam * acc
  return out


save("breadcrumbs_row", breadcrumbs_rows(TV, 0.4, 0.1, 0.7))

# ------------------------------------------------------------------ DARE / DELLA with fixed masks
_real_bernoulli = torch.bernoulli
_real_rand_like = torch.rand_like


def with_masks(prefix, fn):
  """Runs fn with torch.bernoulli drawing numpy masks; stores them as prefix/t/name."""
  calls = []

  def fake(p, *a, **kw):
    m = (rng.random(tuple(p.shape)) < p.numpy()).astype(np.float64)
    calls.append((p.numpy().copy(), m))
    return torch.from_numpy(m).to(p.dtype)

  torch.bernoulli = fake
  try:
    out = fn()
  finally:
    torch.bernoulli = _real_bernoulli
  i = 0
  for k in SHAPES:           # mergekit: tensors in SHAPES order, tasks inner
    for t in range(T):
      probs, m = calls[i]
      store[f"{prefix}/mask{t}/{k}"] = m.reshape(SHAPES[k]).astype(bool)
      store[f"{prefix}/probs{t}/{k}"] = probs.reshape(SHAPES[k]).astype(np.float32)
      i += 1
  return out


save("dare_ties_mergekit", with_masks("dare_ties_mergekit", lambda: mergekit(
  ConsensusMethod.sum, SparsificationMethod.random, False, True, density=0.6)))
save("dare_linear_mergekit", with_masks("dare_linear_mergekit", lambda: mergekit(
  None, SparsificationMethod.random, False, True, lam=0.5, density=0.6)))
save("della_mergekit", with_masks("della_mergekit", lambda: mergekit(
  ConsensusMethod.sum, SparsificationMethod.della_magprune, True, True, density=0.5,
  epsilon=0.2)))
save("della_linear_mergekit", with_masks("della_linear_mergekit", lambda: mergekit(
  None, SparsificationMethod.della_magprune, False, True, density=0.5, epsilon=0.2)))

# DARE "paper" rescale through FusionBench (MergeLM convention): keep where rand > p, / (1 - p)
p_drop = 0.4
uniforms = {f"{t}/{k}": rng.random(SHAPES[k]) for t in range(T) for k in SHAPES}
dropped = []
for t in range(T):
  tv = {k: TV[t][k].clone() for k in SHAPES}
  order = iter(list(tv))

  def fake_rand_like(x, *a, _t=t, **kw):
    return torch.from_numpy(uniforms[f"{_t}/{next(order)}"]).to(x.dtype)

  torch.rand_like = fake_rand_like
  try:
    fb_dare.module_random_drop_(tv, p_drop, rescale=True)
  finally:
    torch.rand_like = _real_rand_like
  dropped.append(tv)
  for k in SHAPES:
    store[f"dare_paper/mask{t}/{k}"] = uniforms[f"{t}/{k}"] > p_drop
save("dare_paper_0.3", add(PRE, {k: sum(d[k] for d in dropped) for k in SHAPES}, 0.3))


# ------------------------------------------------------------------ Consensus / TALL (FusionBench)
def consensus_ref(merged_tv, lam_mask, k_min, lam):
  flat_tv = torch.vstack([tu.state_dict_to_vector(tv) for tv in TV])
  flat_ft = torch.vstack([tu.state_dict_to_vector(f) for f in FT])
  flat_pre = tu.state_dict_to_vector(PRE)
  flat_merged = tu.state_dict_to_vector(merged_tv)
  masks = generate_task_masks(flat_tv, flat_ft, flat_pre, tv=flat_merged,
                              tall_mask_lambda=lam_mask)
  cons = masks.float().sum(0) >= k_min
  return tu.vector_to_state_dict(flat_pre + lam * flat_merged * cons, PRE), masks


ta_sum = {k: sum(tv[k] for tv in TV) for k in SHAPES}
out, masks = consensus_ref(ta_sum, 0.4, 2, 0.3)
save("consensus_ta", out)
for t in range(T):
  for k, v in tu.vector_to_state_dict(masks[t].double(), PRE).items():
    store[f"tall_mask{t}/{k}"] = v.numpy().astype(bool)
out, _ = consensus_ref(ties_official(TV, 0.2, "dis-mean"), 0.5, 2, 1.0)
save("consensus_ties", out)

# ------------------------------------------------------------------ TSV-M, Iso-C, Iso-CTS
save("tsv", add(PRE, compute_and_sum_svd_mem_reduction(TV, accelerator="cpu")))
save("iso_c_1.3", add(PRE, iso_utils.iso_c(TV, accelerator="cpu"), 1.3))
save("iso_cts", add(PRE, iso_utils.iso_cts(TV, common_space_fraction=0.8, accelerator="cpu")))

np.savez_compressed(OUT, **store)
print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(store)} arrays)")
