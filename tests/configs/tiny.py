"""A tiny 2-task MLP on multidigits for subprocess tests (preemption, multi-process).

  python -m jaxmtl.cli.train --config tests/configs/tiny.py --workdir /tmp/t
Data is read from $JAXMTL_DATA_DIR (the tests' session TFDS dir) when data_dir is unset.
"""
from jaxmtl.config import default_config


def get_config(arg: str = ""):
  c = default_config()
  c.model.update(name="mlp", width=32, depth=2, activation="relu")
  c.optim.update(name="adamw", lr=3e-3, weight_decay=1e-4, schedule="warmup_cosine",
                 warmup_steps=2, total_steps=20)
  c.data.update(name="jaxmtl_multidigits", batch_size=32, eval_batch_size=500)
  c.train.update(steps=20, log_every=5, eval_every=10, checkpoint_every=10, progress=False,
                 plot=False, async_checkpoints=False)
  if arg:
    raise ValueError(f"unknown config argument {arg!r}; valid: ''")
  return c
