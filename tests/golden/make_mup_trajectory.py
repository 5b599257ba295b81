"""Training trajectories of microsoft/mup 1.0.0 for tests/test_mup_reference.py (scratch venv).

Setup (never a project dependency):
  python -m venv /tmp/ref_mup && /tmp/ref_mup/bin/pip install torch==2.13.0 numpy pyyaml \
    && /tmp/ref_mup/bin/pip install --no-deps mup==1.0.0
  /tmp/ref_mup/bin/python tests/golden/make_mup_trajectory.py tests/golden/mup_trajectory.npz

Where tests/test_mup.py pins the *rules* (per-parameter lr, weight decay, init std, readout
multiplier), this pins what they do in training: jaxmtl's MLP (``jaxmtl.models.MLP``, depth 3,
ReLU, two task heads) trained with ``jaxmtl.optim.make_optimizer`` must follow the same loss
trajectory as the same network in PyTorch with ``mup.MuReadout`` heads,
``set_base_shapes(base, delta)`` and ``MuAdam`` / ``MuAdam(impl=AdamW)`` / ``MuSGD``, started
from the same weights on the same batches.

Model: x [B, D_IN] -> Linear(D_IN, w) -> ReLU -> Linear(w, w) -> ReLU -> Linear(w, w) -> ReLU
-> {left, right}: MuReadout(w, 10, output_mult=OUTPUT_MULT); loss = CE(left) + CE(right)
(jaxmtl's default ``mtl.weighting="sum"``). Base width BASE, delta width 2·BASE.
Init: torch's default init rescaled by ``set_base_shapes(rescale_params=True)`` (what a mup
user gets), biases set to 0 (jaxmtl zero-inits biases; the test checks that jaxmtl's rules
give the same weight stds with ``init_std = 1/sqrt(3)``). Stored in float32, kernels as
jaxmtl's ``[in, out]``.

Writes an npz with, per width w: ``w{w}/{param}`` initial weights, and per optimizer case
``loss/{case}/w{w}`` (f32[STEPS]: the loss of every step before its update) and
``delta/{case}/w{w}/{param}`` (mean |θ_STEPS - θ_0| of each parameter: a per-parameter
check of its learning-rate scale); ``batch_x`` f32[STEPS, B, D_IN], ``batch_left`` /
``batch_right`` int64[STEPS, B] (labels are a fixed function of x, so the loss falls); and
the cases' hyperparameters as JSON in ``cases``.
"""
import json
import sys

import mup
import numpy as np
import torch
from torch import nn

D_IN, BASE, WIDTHS, STEPS, B, OUTPUT_MULT = 24, 16, (16, 64), 6, 16, 2.0
# name: (mup optimizer, torch impl, kwargs). jaxmtl: coupled wd for Adam / SGD, decoupled
# for AdamW (mup 1.0.0 scales every matrix-like weight_decay by width_mult, so lr·wd is
# width-free in all three).
CASES = {
    "adam": ("MuAdam", "Adam", dict(lr=2e-2, betas=(0.9, 0.99), eps=1e-8)),
    "adam_l2": ("MuAdam", "Adam", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6,
                                       weight_decay=0.1)),
    "adamw": ("MuAdam", "AdamW", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=0.5)),
    "sgd": ("MuSGD", "SGD", dict(lr=0.2, momentum=0.9, weight_decay=1e-2)),
}


class Net(nn.Module):

  def __init__(self, w: int):
    super().__init__()
    self.l0, self.l1, self.l2 = nn.Linear(D_IN, w), nn.Linear(w, w), nn.Linear(w, w)
    self.left = mup.MuReadout(w, 10, output_mult=OUTPUT_MULT)
    self.right = mup.MuReadout(w, 10, output_mult=OUTPUT_MULT)

  def forward(self, x):
    h = torch.relu(self.l2(torch.relu(self.l1(torch.relu(self.l0(x))))))
    return self.left(h), self.right(h)


# torch name -> jaxmtl pure-dict path ("/"-joined).
NAMES = {"l0": "layers/0", "l1": "layers/1", "l2": "layers/2", "left": "heads/heads/left",
         "right": "heads/heads/right"}


def jax_name(torch_name: str) -> str:
  mod, kind = torch_name.split(".")
  return f"{NAMES[mod]}/{'kernel' if kind == 'weight' else 'bias'}"


def to_jax(t: torch.Tensor) -> np.ndarray:
  a = t.detach().numpy().astype(np.float32)
  return a.T.copy() if a.ndim == 2 else a


def make_net(w: int, seed: int) -> Net:
  torch.manual_seed(seed)
  net = Net(w)
  mup.set_base_shapes(net, Net(BASE), delta=Net(2 * BASE), rescale_params=True)
  with torch.no_grad():
    for n, p in net.named_parameters():
      if n.endswith("bias"):
        p.zero_()
  return net


def main(path: str) -> None:
  rng = np.random.default_rng(0)
  xs = rng.uniform(0.0, 1.0, (STEPS, B, D_IN)).astype(np.float32)
  proj = rng.normal(size=(2, D_IN, 10))
  left, right = (np.argmax(xs @ proj[i], -1).astype(np.int64) for i in range(2))
  out = {"batch_x": xs, "batch_left": left, "batch_right": right,
         "cases": np.array(json.dumps({k: [v[0], v[1], v[2]] for k, v in CASES.items()}))}
  for w in WIDTHS:
    init = make_net(w, seed=w)
    for n, p in init.named_parameters():
      out[f"w{w}/{jax_name(n)}"] = to_jax(p)
    for case, (mu_opt, impl, kw) in CASES.items():
      net = make_net(w, seed=w)  # same weights as `init`
      opt = getattr(mup, mu_opt)(net.parameters(), impl=getattr(torch.optim, impl), **kw)
      losses = []
      for t in range(STEPS):
        lo, ro = net(torch.from_numpy(xs[t]))
        loss = (nn.functional.cross_entropy(lo, torch.from_numpy(left[t]))
                + nn.functional.cross_entropy(ro, torch.from_numpy(right[t])))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
      out[f"loss/{case}/w{w}"] = np.array(losses, np.float32)
      for (n, p), p0 in zip(net.named_parameters(), init.parameters()):
        out[f"delta/{case}/w{w}/{jax_name(n)}"] = np.float32((p - p0).abs().mean().detach())
      print(case, w, np.round(losses, 5))
  np.savez_compressed(path, **out)


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "tests/golden/mup_trajectory.npz")
