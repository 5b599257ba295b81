"""Small builders shared by the core tests."""
from jaxmtl import config as config_lib


def tiny_config(data_dir, **over) -> config_lib.ExperimentConfig:
  """A 2-task MLP on multidigits that trains in well under a second per step."""
  c = config_lib.default_config()
  c.model.update(name="mlp", width=32, depth=2, activation="relu")
  c.optim.update(name="adamw", lr=3e-3, weight_decay=1e-4, schedule="warmup_cosine",
                 warmup_steps=2, total_steps=20)
  c.data.update(name="jaxmtl_multidigits", data_dir=data_dir, batch_size=32,
                eval_batch_size=500)
  c.train.update(steps=20, log_every=5, eval_every=10, checkpoint_every=10, progress=False,
                 plot=False, async_checkpoints=False)
  config_lib.apply_overrides(c, over)
  return config_lib.experiment_config(c)
