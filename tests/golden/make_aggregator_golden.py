"""Produces tests/golden/aggregator_golden.npz (reference values for tests/test_aggregators.py).

Not collected by pytest; never imported by jaxmtl. Run in a scratch venv:
  python3 -m venv /tmp/ref_agg/venv && . /tmp/ref_agg/venv/bin/activate
  pip install torch==2.13.0 && pip install "torchjd[full]==0.18.0"
  python tests/golden/make_aggregator_golden.py
Versions used: torch 2.13.0+cpu, torchjd 0.18.0, numpy 2.4.6, scipy (torchjd's dependency),
cvxpy 1.9.3 (CLARABEL), quadprog 0.1.14.

References:
* torchjd 0.18.0 aggregators (Mean, UPGrad, DualProj, MGDA, PCGrad, IMTLG, CAGrad, AlignedMTL,
  NashMTL, GradDrop), called directly in float64.
* LibMTL (median-research-group/LibMTL, LibMTL/weighting/CAGrad.py and Aligned_MTL.py): its PyPI
  wheel does not import, so `libmtl_cagrad` / `libmtl_aligned` below re-implement those two
  `backward` methods faithfully in numpy/scipy/torch (same formulas, same SLSQP call, same
  eps constants; torch.symeig replaced by torch.linalg.eigh).
* Exact MGDA: the min-norm point of the convex hull, solved with cvxpy/CLARABEL to 1e-10.
"""

import pathlib

import cvxpy as cp
import numpy as np
import torch
from scipy.optimize import minimize
from torchjd import aggregation as agg

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).with_name("aggregator_golden.npz")


def cases():
  rs = np.random.RandomState(1234)
  small = rs.randn(3, 5)
  medium = rs.randn(5, 8)
  conflict = np.array([[1.0, 0.2, 0.0, 0.1], [-0.9, 0.5, 0.1, 0.0], [0.3, -1.0, 0.4, -0.2]])
  base = rs.randn(2, 8)
  rankdef = np.stack([base[0], base[1], base[0] + base[1], 2.0 * base[0], base[0] - base[1]])
  return {"small": small, "medium": medium, "conflict": conflict, "rankdef": rankdef}


def libmtl_cagrad(grads, calpha, rescale):
  """Faithful numpy re-implementation of LibMTL CAGrad.backward (rep_grad=False)."""
  task_num = grads.shape[0]
  gg = grads @ grads.T
  g0_norm = np.sqrt(gg.mean() + 1e-8)
  x_start = np.ones(task_num) / task_num
  bnds = tuple((0, 1) for _ in x_start)
  cons = ({"type": "eq", "fun": lambda x: 1 - sum(x)})
  b = x_start.copy()
  c = calpha * g0_norm + 1e-8

  def objfn(x):
    return (x.reshape(1, -1).dot(gg).dot(b.reshape(-1, 1))
            + c * np.sqrt(x.reshape(1, -1).dot(gg).dot(x.reshape(-1, 1)) + 1e-8)).sum()

  w = minimize(objfn, x_start, bounds=bnds, constraints=cons).x
  gw = (grads * w.reshape(-1, 1)).sum(0)
  lmbda = c / (np.linalg.norm(gw) + 1e-8)
  g = grads.mean(0) + lmbda * gw
  return g / {0: 1.0, 1: 1 + calpha**2, 2: 1 + calpha}[rescale]


def libmtl_aligned(grads):
  """Faithful re-implementation of LibMTL Aligned_MTL.backward (torch.symeig -> eigh)."""
  g = torch.as_tensor(grads)
  m = g @ g.T
  lmbda, v = torch.linalg.eigh(m)
  tol = torch.max(lmbda) * max(m.shape[-2:]) * torch.finfo(torch.float32).eps
  rank = sum(lmbda > tol)
  order = torch.argsort(lmbda, dim=-1, descending=True)
  lmbda, v = lmbda[order][:rank], v[:, order][:, :rank]
  sigma = torch.diag(1 / lmbda.sqrt())
  b = lmbda[-1].sqrt() * ((v @ sigma) @ v.T)
  alpha = b.sum(0)
  return (alpha @ g).numpy(), alpha.numpy()


def exact_mgda(grads):
  w = cp.Variable(grads.shape[0])
  prob = cp.Problem(cp.Minimize(cp.sum_squares(grads.T @ w)), [w >= 0, cp.sum(w) == 1])
  prob.solve(cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
  return grads.T @ w.value


def main():
  out = {}
  for name, j in cases().items():
    t = torch.as_tensor(j)
    n = j.shape[0]
    out[f"{name}/J"] = j
    simple = {
        "mean": agg.Mean(), "upgrad": agg.UPGrad(), "dualproj": agg.DualProj(),
        "upgrad_pref": agg.UPGrad(pref_vector=torch.arange(1.0, n + 1.0)),
        "dualproj_pref": agg.DualProj(pref_vector=torch.arange(1.0, n + 1.0)),
        "mgda": agg.MGDA(), "mgda_fw5": agg.MGDA(epsilon=1e-9, max_iters=5), "imtlg": agg.IMTLG(),
        "cagrad": agg.CAGrad(c=0.5), "cagrad_c2": agg.CAGrad(c=2.0),
        "aligned_min": agg.AlignedMTL(), "aligned_median": agg.AlignedMTL(scale_mode="median"),
        "aligned_rmse": agg.AlignedMTL(scale_mode="rmse"),
    }
    for key, a in simple.items():
      out[f"{name}/{key}"] = a(t).numpy()
    # PCGrad: the orders torch.randperm draws inside the weighting, captured with the same seed.
    torch.manual_seed(7)
    out[f"{name}/pcgrad_perms"] = np.stack([torch.randperm(n).numpy() for _ in range(n)])
    torch.manual_seed(7)
    out[f"{name}/pcgrad"] = agg.PCGrad()(t).numpy()
    # GradDrop: the single torch.rand draw, captured with the same seed.
    leak = torch.linspace(0.0, 0.5, n)
    torch.manual_seed(11)
    out[f"{name}/graddrop_u"] = torch.rand(j.shape[1]).numpy()
    torch.manual_seed(11)
    out[f"{name}/graddrop"] = agg.GradDrop()(t).numpy()
    torch.manual_seed(11)
    out[f"{name}/graddrop_leak"] = agg.GradDrop(leak=leak)(t).numpy()
    # Nash-MTL: three consecutive calls on J, 2 J, J / 3 (state carried); default and no clip.
    for tag, kwargs in (("nash", {}), ("nash_noclip", {"max_norm": 0.0})):
      nash = agg.NashMTL(n_tasks=n, **kwargs)
      for step, scale in enumerate((1.0, 2.0, 1.0 / 3.0)):
        out[f"{name}/{tag}_{step}"] = nash(t * scale).numpy()
    for r in (0, 1, 2):
      out[f"{name}/libmtl_cagrad_r{r}"] = libmtl_cagrad(j, 0.5, r)
    out[f"{name}/libmtl_aligned"], _ = libmtl_aligned(j)
    out[f"{name}/mgda_exact"] = exact_mgda(j)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(out)} arrays)")


if __name__ == "__main__":
  main()
