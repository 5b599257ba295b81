"""μTransfer learning-rate sweeps (Tensor Programs V, arXiv 2203.03466, Fig. 1 / Sec. 5).

The config is an experiment config (every key of `jaxmtl.config.default_config()`) plus a
`sweep` block that `tools/mutransfer.py` removes before building the ExperimentConfig:

  python tools/mutransfer.py --config configs/mutransfer.py:mlp --workdir runs/mutransfer_mlp
  python tools/mutransfer.py --config configs/mutransfer.py:lm --workdir runs/mutransfer_lm
  python tools/mutransfer.py --config configs/mutransfer.py:runlocal --workdir /tmp/mt  # seconds

sweep.widths: model widths; sweep.log2_lrs: the lr grid as powers of 2; sweep.seeds;
sweep.params: parametrizations (`mup.name` values); sweep.base_width: μP base width (also
the width at which μP equals SP); sweep.avg_last: the reported loss is the mean train loss
over the last `avg_last` steps.
"""
import ml_collections

from jaxmtl.config import default_config

ARGS = ("", "mlp", "lm", "runlocal", "lm_runlocal")


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r}; valid: {', '.join(map(repr, ARGS))}")
  c = default_config()
  c.seed = 0
  c.optim.update(name="adam", schedule="constant", weight_decay=0.0)
  c.mesh.update(shape=(-1, 1, 1), strategy="dp")
  c.train.update(progress=False, plot=False)
  sweep = dict(widths=(64, 128, 256, 512), log2_lrs=tuple(range(-14, -5)), seeds=(0,),
               params=("sp", "mup"), base_width=64, avg_last=20)
  if arg.startswith("lm"):
    c.model.update(name="transformer", depth=2, num_heads=4, max_len=128, activation="gelu")
    c.data.update(name="jaxmtl_bytes", batch_size=16)
    c.train.steps = 200
    sweep.update(widths=(64, 128, 256), log2_lrs=(-12, -10, -8, -6, -4), avg_last=20)
  else:
    c.model.update(name="mlp", depth=3, activation="relu")
    c.data.update(name="jaxmtl_multidigits", batch_size=64)
    c.train.steps = 300
  if arg.endswith("runlocal"):
    c.train.steps = 20
    sweep.update(widths=(32, 64), log2_lrs=(-10, -8, -6), base_width=32, avg_last=5)
    if arg.startswith("lm"):
      c.data.batch_size = 4
  c.sweep = ml_collections.ConfigDict(sweep)
  return c
