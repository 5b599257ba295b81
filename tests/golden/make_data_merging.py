"""Produces tests/golden/data_merging.npz from FusionBench's own merge formulas.

Run in a scratch venv (never a project dependency):
  python -m venv /tmp/ref_mio && /tmp/ref_mio/bin/pip install torch==2.13.0 && \
  /tmp/ref_mio/bin/pip install fusion-bench
  /tmp/ref_mio/bin/python tests/golden/make_data_merging.py
Uses fusion_bench.method.fisher_merging.fisher_merging.merging_with_fisher_weights and
fusion_bench.method.regmean.regmean.merging_with_regmean_weights on one PyTorch-layout Linear
(weight [out, in]); the test transposes to Flax's [in, out].
"""
import pathlib

import numpy as np
import torch
from fusion_bench.method.fisher_merging.fisher_merging import merging_with_fisher_weights
from fusion_bench.method.regmean.regmean import merging_with_regmean_weights

K, IN, OUT, ALPHA = 3, 5, 4, 0.7
r = np.random.default_rng(0)
z = {"alpha": np.float64(ALPHA), "coef": np.array([0.5, 0.3, 0.2])}
for i in range(K):
  z[f"w{i}"] = r.normal(size=(OUT, IN)).astype(np.float32)
  z[f"b{i}"] = r.normal(size=(OUT,)).astype(np.float32)
  z[f"fw{i}"] = r.uniform(size=(OUT, IN)).astype(np.float32) ** 2
  z[f"fb{i}"] = r.uniform(size=(OUT,)).astype(np.float32) ** 2
  x = r.normal(size=(30, IN))
  z[f"g{i}"] = (x.T @ x / 30).astype(np.float32)
t = lambda a: torch.tensor(a)
params = {"fc.weight": [t(z[f"w{i}"]) for i in range(K)],
          "fc.bias": [t(z[f"b{i}"]) for i in range(K)]}
fishers = [{"fc.weight": t(z[f"fw{i}"]), "fc.bias": t(z[f"fb{i}"])} for i in range(K)]
out = merging_with_fisher_weights(params, fishers, torch.tensor(z["coef"], dtype=torch.float32),
                                  normalize_fisher_weight=True, minimal_fisher_weight=1e-6)
z["fisher_w"], z["fisher_b"] = out["fc.weight"].numpy(), out["fc.bias"].numpy()
out = merging_with_regmean_weights(params, [{"fc": t(z[f"g{i}"])} for i in range(K)],
                                   reduce_non_diagonal_ratio=ALPHA, weight_transpose=True)
z["regmean_w"], z["regmean_b"] = out["fc.weight"].numpy(), out["fc.bias"].numpy()
np.savez(pathlib.Path(__file__).parent / "data_merging.npz", **z)
print("wrote", {k: np.shape(v) for k, v in z.items()})
