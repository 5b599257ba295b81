"""Quickstart: a two-task MLP on MultiDigits (two overlaid digits, one head per digit).

  jaxmtl-train --config configs/quickstart.py --workdir runs/quickstart
  jaxmtl-train --config configs/quickstart.py:runlocal --workdir /tmp/q   # seconds
"""
from jaxmtl.config import default_config


def get_config(arg: str = ""):
  c = default_config()
  c.seed = 0
  c.model.update(name="mlp", width=256, depth=2, activation="relu")
  c.mup.name = "sp"
  c.optim.update(name="adamw", lr=2e-3, weight_decay=1e-4, schedule="warmup_cosine",
                 warmup_steps=100, total_steps=1500)
  c.data.update(name="jaxmtl_multidigits", batch_size=128, eval_batch_size=1000)
  c.mesh.update(shape=(-1, 1, 1), strategy="dp")
  c.train.update(steps=1500, log_every=50, eval_every=500, checkpoint_every=500)
  c.mtl.weighting = "sum"
  if arg == "runlocal":
    c.model.width = 64
    c.optim.update(warmup_steps=5, total_steps=40)
    c.train.update(steps=40, log_every=10, eval_every=20, checkpoint_every=20)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; valid: '' or 'runlocal'")
  return c
