"""μTransfer learning-rate sweeps (Tensor Programs V, arXiv 2203.03466, Fig. 1 / Sec. 5).

The config is an experiment config (every key of `jaxmtl.config.default_config()`) plus a
`sweep` block that `tools/mutransfer.py` removes before building the ExperimentConfig:

  python tools/mutransfer.py --config configs/mutransfer.py:mlp --workdir runs/mutransfer_mlp
  python tools/mutransfer.py --config configs/mutransfer.py:mlp_sgd --workdir runs/mt_mlp_sgd
  python tools/mutransfer.py --config configs/mutransfer.py:lm --workdir runs/mutransfer_lm
  python tools/mutransfer.py --config configs/mutransfer.py:runlocal --workdir /tmp/mt  # seconds

sweep.widths: model widths; sweep.log2_lrs: the lr grid as powers of 2; sweep.seeds (init
and data order); sweep.params: parametrizations (`mup.name` values); sweep.base_width: μP
base width (the width at which μP equals SP); sweep.avg_last: the reported loss is the mean
train loss over the last `avg_last` steps.

`mlp`: the embedded two-task MultiDigits MLP (depth 3, ReLU, 16x16 inputs, sum of the two
task losses), Adam with a constant lr, batch 64, 300 steps (2.4 epochs), widths 64..1024 with
μP base width 128 (width 64, narrower than the 256 input pixels, is below the μP regime at
this lr; see docs/mup.md), lr 2^-12..2^-4, 3 seeds, loss = mean of the last 50 steps.
`mlp_sgd`: the same with SGD + momentum 0.9 (the optimizer of TP-V's MLP experiment and of
microsoft/mup's examples/MLP), lr 2^-9..2^0. `lm`: the byte-level transformer LM on
`jaxmtl_bytes` (2 pre-norm blocks, 4 heads, RoPE, sequences of 128 bytes, batch 8, 150
steps), Adam, widths 64..256 with base 64, lr 2^-11..2^-5, one seed (CPU budget).
"""
import ml_collections

from jaxmtl.config import default_config

ARGS = ("", "mlp", "mlp_sgd", "lm", "runlocal", "lm_runlocal")


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r}; valid: {', '.join(map(repr, ARGS))}")
  c = default_config()
  c.seed = 0
  c.optim.update(name="adam", schedule="constant", weight_decay=0.0)
  c.mesh.update(shape=(-1, 1, 1), strategy="dp")
  c.train.update(progress=False, plot=False)
  sweep = dict(widths=(64, 128, 256, 512, 1024), log2_lrs=tuple(range(-12, -3)),
               seeds=(0, 1, 2), params=("sp", "mup"), base_width=128, avg_last=50)
  if arg.startswith("lm"):
    c.model.update(name="transformer", depth=2, num_heads=4, max_len=128, activation="gelu")
    c.data.update(name="jaxmtl_bytes", batch_size=8)
    c.train.steps = 150
    sweep.update(widths=(64, 128, 256), log2_lrs=tuple(range(-11, -4)), seeds=(0,),
                 base_width=64, avg_last=20)
  else:
    c.model.update(name="mlp", depth=3, activation="relu")
    c.data.update(name="jaxmtl_multidigits", batch_size=64)
    c.train.steps = 300
  if arg == "mlp_sgd":
    c.optim.update(name="sgd", momentum=0.9)
    sweep.update(log2_lrs=tuple(range(-9, 1)))
  if arg.endswith("runlocal"):
    c.train.steps = 20
    sweep.update(widths=(32, 64), log2_lrs=(-10, -8, -6), seeds=(0,), base_width=32,
                 avg_last=5)
    if arg.startswith("lm"):
      c.data.batch_size = 4
  c.sweep = ml_collections.ConfigDict(sweep)
  return c
