"""The merging benchmark: pretrain -> fine-tune on each task -> merge -> table (issue 6).

  python tools/merge_benchmark.py --config configs/merge_benchmark.py --workdir runs/merge_benchmark
  python tools/merge_benchmark.py --config configs/merge_benchmark.py:runlocal --workdir /tmp/mb

The experiment keys (model, optim, data, mesh, train, ...) are the base of every training stage
(`jaxmtl.merging.benchmark`); the `benchmark` block says what each stage changes and which
merging methods run. Default: 8 suite tasks (needs ../shared/data for MNIST/Fashion-MNIST), a
3-layer ReLU MLP pretrained on Fashion-MNIST, 3 seeds. `runlocal`: 3 tasks that need nothing
beyond the installed packages (sklearn digits, MNIST-1D, permuted digits), pretrained on
MultiDigits, 1 seed, short stages (the Quickstart's merging run).
"""
import ml_collections

from jaxmtl.config import default_config
from jaxmtl.merging.benchmark import DATA_FREE, METHODS

FULL_TASKS = ("mnist", "digits", "mnist1d", "multidigits", "mnist_m", "mnist_perm",
              "fashion_perm", "digits_perm")
SMALL_TASKS = ("digits", "mnist1d", "digits_perm")


def get_config(arg: str = ""):
  if arg not in ("", "runlocal"):
    raise ValueError(f"unknown config argument {arg!r}; valid: '' or 'runlocal'")
  c = default_config()
  c.seed = 0
  c.model.update(name="mlp", width=256, depth=3, activation="relu")
  c.mup.name = "sp"
  c.optim.update(name="adamw", lr=1e-3, weight_decay=1e-4, schedule="warmup_cosine",
                 warmup_steps=50, total_steps=1000)
  c.data.update(name="jaxmtl_suite_mnist", batch_size=128, eval_batch_size=1000)
  c.mesh.update(shape=(-1, 1, 1), strategy="dp")
  # Stages evaluate and checkpoint once, at their end (the benchmark evaluates itself).
  c.train.update(steps=1000, log_every=100, eval_every=100_000, checkpoint_every=100_000,
                 plot=False)
  c.benchmark = ml_collections.ConfigDict(dict(
      tasks=tuple(f"jaxmtl_suite_{t}" for t in FULL_TASKS),
      pretrain_data="jaxmtl_suite_fashion", pretrain_steps=2000, pretrain_lr=2e-3,
      finetune_steps=400, finetune_lr=1e-3, finetune_batch_size=64,
      mtl_steps=1500, mtl_lr=1e-3, lpft=True, probe_steps=300, probe_lr=3e-2,
      seeds=(0, 1, 2), methods=METHODS,
      adamerging_steps=500, adamerging_lr=1e-3, adamerging_batch_size=16,
      adamerging_clamp=True, adamerging_init=0.3,
      diagnostic_lambdas=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0),
      check_acceptance=True, cache=""))
  # Options with a None default are set here so that they can be overridden from the CLI.
  c.benchmark.adamerging_entropy_eps = ml_collections.config_dict.placeholder(float)
  # Every data-free method's defaults, so that `--config.benchmark.method_options.dare.drop_rate=0.3`
  # (an existing key) can be given on the command line.
  c.benchmark.method_options = ml_collections.ConfigDict(
      {m: dict(opts) for m, (_, opts) in DATA_FREE.items()}, type_safe=False)
  if arg == "runlocal":
    c.model.width = 128
    c.benchmark.update(
        tasks=tuple(f"jaxmtl_suite_{t}" for t in SMALL_TASKS), pretrain_data="jaxmtl_multidigits",
        pretrain_steps=300, finetune_steps=150, mtl_steps=300, seeds=(0,),
        adamerging_steps=100, adamerging_lr=1e-2, diagnostic_lambdas=(0.0, 0.1, 0.3, 0.6, 1.0),
        check_acceptance=False)
    c.train.progress = False
  return c
