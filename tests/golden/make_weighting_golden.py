"""Produces tests/golden/weighting_golden.json from the PyTorch reference code (not collected).

Run in a scratch venv with torch (never a jaxmtl dependency):
  python3 -m venv /tmp/ref_weight && /tmp/ref_weight/bin/pip install torch==2.13.0 numpy
  /tmp/ref_weight/bin/python tests/golden/make_weighting_golden.py

FAMO: the official Cranial-XIX/FAMO famo.py class (get_weighted_loss / update), verbatim logic.
GradNorm: LibMTL/weighting/GradNorm.py's L_grad on given per-task gradients.
DB-MTL: LibMTL/weighting/DB_MTL.py's buffer / alpha / combined gradient.
"""
import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

torch.manual_seed(0)
OUT = pathlib.Path(__file__).parent / "weighting_golden.json"


class FAMO:  # Cranial-XIX/FAMO famo.py (max_norm clipping omitted: no model here)
  def __init__(self, n_tasks, gamma, w_lr):
    self.min_losses = torch.zeros(n_tasks)
    self.w = torch.tensor([0.0] * n_tasks, requires_grad=True)
    self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)

  def get_weighted_loss(self, losses):
    self.prev_loss = losses
    z = F.softmax(self.w, -1)
    D = losses - self.min_losses + 1e-8
    c = (z / D).sum().detach()
    return (D.log() * z / c).sum()

  def update(self, curr_loss):
    delta = (self.prev_loss - self.min_losses + 1e-8).log() - \
            (curr_loss - self.min_losses + 1e-8).log()
    with torch.enable_grad():
      d = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta.detach())[0]
    self.w_opt.zero_grad()
    self.w.grad = d
    self.w_opt.step()


def famo_case():
  lr, gamma, t = 0.025, 1e-3, 4
  famo = FAMO(t, gamma, lr)
  rng = np.random.default_rng(0)
  losses = rng.uniform(0.5, 3.0, size=(6, t))
  after = losses * rng.uniform(0.7, 1.05, size=(6, t))
  out = {"lr": lr, "gamma": gamma, "losses": losses.tolist(), "losses_after": after.tolist(),
         "weights": [], "logits": [], "loss_grads": []}
  for l, a in zip(losses, after):
    lt = torch.tensor(l, dtype=torch.float32, requires_grad=True)
    out["weights"].append(F.softmax(famo.w, -1).detach().tolist())
    famo.get_weighted_loss(lt).backward()
    out["loss_grads"].append(lt.grad.tolist())
    famo.update(torch.tensor(a, dtype=torch.float32))
    out["logits"].append(famo.w.detach().tolist())
  return out


def gradnorm_case():
  t, alpha = 3, 1.5
  loss_scale = torch.tensor([1.0, 1.3, 0.6], requires_grad=True)
  grads = torch.randn(t, 7)
  losses = torch.tensor([0.9, 1.7, 0.4])
  initial = torch.tensor([1.2, 2.0, 0.8])
  w = t * F.softmax(loss_scale, dim=-1)
  g_per_loss = torch.norm(w.unsqueeze(1) * grads, p=2, dim=-1)
  g = g_per_loss.mean(0)
  l_i = losses / initial
  r_i = l_i / l_i.mean()
  l_grad = (g_per_loss - (g * r_i ** alpha).detach()).abs().sum(0)
  l_grad.backward()
  return {"alpha": alpha, "logits": [1.0, 1.3, 0.6], "grad_norms": grads.norm(dim=-1).tolist(),
          "losses": losses.tolist(), "initial_losses": initial.tolist(),
          "weights": w.detach().tolist(), "l_grad": l_grad.item(),
          "logits_grad": loss_scale.grad.tolist()}


def db_mtl_case():
  t, d, beta, beta_sigma = 3, 5, 0.9, 0.5
  grads_raw = torch.randn(4, t, d)
  losses = torch.rand(4, t) + 0.2
  buf = torch.zeros(t, d)
  out = {"beta": beta, "beta_sigma": beta_sigma, "jacobians": grads_raw.tolist(),
         "losses": losses.tolist(), "updates": [], "alphas": []}
  for step in range(1, 5):
    batch_grads = grads_raw[step - 1] / (losses[step - 1] + 1e-8)[:, None]  # ∇ log(L + 1e-8)
    buf = batch_grads + (beta / step ** beta_sigma) * (buf - batch_grads)
    u = buf.norm(dim=-1)
    alpha = u.max() / (u + 1e-8)
    out["alphas"].append(alpha.tolist())
    out["updates"].append(sum(alpha[i] * buf[i] for i in range(t)).tolist())
  return out


if __name__ == "__main__":
  OUT.write_text(json.dumps({"famo": famo_case(), "gradnorm": gradnorm_case(),
                             "db_mtl": db_mtl_case()}, indent=1))
  print("wrote", OUT)
