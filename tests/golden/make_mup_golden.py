"""Golden values for tests/test_mup.py from microsoft/mup 1.0.0 (run in a scratch venv, not pytest).

Setup (never a project dependency):
  python -m venv /tmp/ref_mup && /tmp/ref_mup/bin/pip install torch==2.13.0 \
    && /tmp/ref_mup/bin/pip install --no-deps mup==1.0.0 && /tmp/ref_mup/bin/pip install pyyaml
  /tmp/ref_mup/bin/python tests/golden/make_mup_golden.py

Model: MLP 784 -> w -> w -> 10 (``nn.Linear, nn.Linear, MuReadout``, all with bias), base width
64, delta width 128, target widths 64, 256, 1024. For every parameter it prints:
  * ``adam_lr`` / ``adam_wd``: its param group's lr / weight_decay in ``MuAdam(lr=1, weight_decay=1)``;
  * ``sgd_lr`` / ``sgd_wd``: the same for ``MuSGD``;
  * ``rescale``: the factor ``set_base_shapes(rescale_params=True)`` multiplies it by (measured by
    filling the parameter with ones first);
  * ``std``: its init std, ``torch default std x rescale``, where torch's default for ``nn.Linear``
    (``kaiming_uniform(a=sqrt(5))`` and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``) has std
    ``1/sqrt(3 fan_in)``; checked against the empirical std of the rescaled params;
and the readout's forward multiplier ``output_mult / width_mult()``.
"""
import json
import math

import mup
import torch
from torch import nn


def mlp(width: int) -> nn.Sequential:
  return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                       mup.MuReadout(width, 10, output_mult=1.0))


def group_values(opt, model, key):
  by_id = {id(p): g[key] for g in opt.param_groups for p in g['params']}
  return {n: by_id[id(p)] for n, p in model.named_parameters()}


def main() -> None:
  torch.manual_seed(0)
  out = {}
  for width in (64, 256, 1024):
    base, delta = mlp(64), mlp(128)
    model = mlp(width)
    default_std = {}
    for name, p in model.named_parameters():
      fan_in = p.shape[1] if p.ndim == 2 else dict(model.named_parameters())[
          name.replace('bias', 'weight')].shape[1]
      default_std[name] = 1.0 / math.sqrt(3 * fan_in)
    # Rescale factors: fill with ones, then let set_base_shapes rescale.
    ones = mlp(width)
    with torch.no_grad():
      for p in ones.parameters():
        p.fill_(1.0)
    mup.set_base_shapes(ones, base, delta=delta, rescale_params=True)
    rescale = {n: float(p.flatten()[0]) for n, p in ones.named_parameters()}
    mup.set_base_shapes(model, base, delta=delta, rescale_params=True)
    adam = mup.MuAdam(model.parameters(), lr=1.0, weight_decay=1.0)
    sgd = mup.MuSGD(model.parameters(), lr=1.0, weight_decay=1.0)
    rows = {}
    for key, vals in (('adam_lr', group_values(adam, model, 'lr')),
                      ('adam_wd', group_values(adam, model, 'weight_decay')),
                      ('sgd_lr', group_values(sgd, model, 'lr')),
                      ('sgd_wd', group_values(sgd, model, 'weight_decay'))):
      for n, v in vals.items():
        rows.setdefault(n, {})[key] = v
    for n, p in model.named_parameters():
      rows[n]['rescale'] = rescale[n]
      rows[n]['std'] = default_std[n] * rescale[n]
      rows[n]['empirical_std'] = float(p.detach().std())
      rows[n]['ninf'] = p.infshape.ninf()
      rows[n]['width_mult'] = p.infshape.width_mult()
    readout = model[4]
    rows['readout_multiplier'] = readout.output_mult / readout.width_mult()
    out[width] = rows
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  main()
