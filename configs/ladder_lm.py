"""Scaling-law study: a μP byte-level transformer LM ladder on the stdlib corpus.

`get_config(arg)` is the base experiment (the μP base model, trainable on its own with
`jaxmtl-train`); `ladder(arg)` is the ladder block (`jaxmtl.scaling.ladder.LadderConfig`)
that `tools/scaling_study.py` and `launch/launch.py --ladder` expand into runs:

  python tools/scaling_study.py --config configs/ladder_lm.py --workdir runs/scaling_lm
  python tools/scaling_study.py --config configs/ladder_lm.py:runlocal --workdir /tmp/sl
  python launch/launch.py slurm --ladder --nodes 1 --gpus-per-node 1 \
      --config configs/ladder_lm.py --workdir /shared/runs/scaling_lm --dry-run

The documented study (docs/scaling.md): 5 widths 8..48 (depth = round(width / 40), 4 heads)
x 3 IsoFLOP budgets 1e10, 3e10, 1e11 FLOPs, plus two held-out runs at 3e11 (width 32, and
width 64 / depth 2: beyond every fitted size); μP with base width 32, so the learning rate
tuned at width 32 (2^-6, docs/scaling.md) is used at every width; Adam, warmup + cosine to
10 % over each run's own length; batch 16 x 128 bytes; held-out loss in bits per byte on
the stdlib corpus's test files.
`:runlocal` is a seconds-long version on the small pydoc corpus (used by the tests); `:lr`
is the μP learning-rate transfer check (width 32 at 1e11 and width 64 / depth 2 at 3e11,
crossed with an lr sweep, see docs/scaling.md).
"""
from jaxmtl.config import default_config

ARGS = ("", "runlocal", "lr")


def _check(arg: str) -> None:
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r}; valid: {', '.join(map(repr, ARGS))}")


def get_config(arg: str = ""):
  _check(arg)  # ":lr" shares the base experiment
  c = default_config()
  c.seed = 0
  c.model.update(name="transformer", width=32, depth=1, num_heads=4, base_width=32,
                 mlp_ratio=4.0, activation="gelu", norm="layernorm", max_len=128)
  c.mup.name = "mup"
  c.optim.update(name="adam", lr=2.0 ** -6, b2=0.99, weight_decay=0.0, grad_clip_norm=1.0,
                 schedule="warmup_cosine", warmup_steps=20, total_steps=400, min_lr_ratio=0.1)
  c.data.update(name="jaxmtl_bytes/stdlib_seq128", batch_size=16, eval_split="test",
                eval_batch_size=256)
  c.mesh.update(shape=(-1, 1, 1), strategy="dp")
  c.train.update(steps=400, log_every=50, eval_every=400, checkpoint_every=200,
                 keep_checkpoints=1, progress=False, plot=False)
  if arg == "runlocal":
    c.model.update(width=16, num_heads=2, base_width=16)
    c.data.update(name="jaxmtl_bytes", batch_size=8, eval_split="test[:32]", eval_batch_size=32)
    # A constant lr: runs of one width then compile to the same programs, which the study's
    # persistent compilation cache reuses (seconds instead of minutes).
    c.optim.update(schedule="constant", warmup_steps=0, total_steps=0)
    c.train.update(steps=4, log_every=2, eval_every=4, checkpoint_every=4, progress=False)
  return c


def ladder(arg: str = ""):
  _check(arg)
  import ml_collections
  if arg == "lr":  # μP transfer check: the base width and width 64 (depth 2), one budget each
    return ml_collections.ConfigDict(dict(
        widths=(32,), aspect_ratio=40.0, base_width=32, tokens_per_param=(),
        flop_budgets=(1e11,), holdout_widths=(64,), holdout_budgets=(3e11,), min_steps=16,
        checkpoints=2, warmup_fraction=0.05))
  if arg == "runlocal":
    return ml_collections.ConfigDict(dict(
        widths=(16, 24), aspect_ratio=40.0, base_width=16, tokens_per_param=(),
        flop_budgets=(3e8, 6e8, 1.2e9), holdout_widths=(24,), holdout_budgets=(2.4e9,),
        min_steps=2, checkpoints=1, warmup_fraction=0.0))
  return ml_collections.ConfigDict(dict(
      widths=(8, 16, 24, 32, 48), aspect_ratio=40.0, base_width=32, tokens_per_param=(),
      flop_budgets=(1e10, 3e10, 1e11), holdout_widths=(32, 64), holdout_budgets=(3e11, 3e11),
      min_steps=16, checkpoints=2, warmup_fraction=0.05))
