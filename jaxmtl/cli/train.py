"""`jaxmtl-train --config configs/x.py[:arg] --config.a.b=value --workdir DIR`.

The only place that parses flags (and, on multi-host runs, initialises
jax.distributed). Everything below receives a frozen ExperimentConfig.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumes if it has checkpoints).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host runs; SLURM, "
                                 "TPU pods and Open MPI are detected automatically).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (implies --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Process count (with the above).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with the above).")


def run(argv) -> int:
  del argv
  import jax
  from absl import logging
  if logging.get_verbosity() <= logging.INFO and not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO; -v 0 brings it back
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from jaxmtl import config as config_lib
  from jaxmtl.train import loop
  if _CONFIG.value is None or _WORKDIR.value is None:
    print("usage: jaxmtl-train --config configs/quickstart.py[:arg] --workdir DIR "
          "[--config.key=value ...]", file=sys.stderr)
    return 2
  try:
    cfg = config_lib.experiment_config(_CONFIG.value)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    results = loop.train(cfg, _WORKDIR.value)
  except loop.Preempted as e:
    print(str(e), file=sys.stderr)
    return loop.PREEMPTED_EXIT_CODE
  except loop.NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  if "table" in results:
    print(f"\nResults after {results['step']} steps ({_WORKDIR.value}):\n")
    print(results["table"])
    print(f"\nplots: {_WORKDIR.value}/curves.png   metrics: {_WORKDIR.value}/metrics.jsonl")
  return 0


def main():
  def _main(argv):
    sys.exit(run(argv))
  try:
    app.run(_main)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    # config_flags raises these while parsing --config.a.b=value overrides.
    msg = str(e).strip("'\"").replace("\\n", " ")
    print(f"error: bad --config override or value: {msg}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
