"""The merging benchmark from one command: pretrain -> fine-tune -> merge -> table and plots.

  python tools/merge_benchmark.py --config configs/merge_benchmark.py --workdir runs/merge_benchmark
  python tools/merge_benchmark.py --config configs/merge_benchmark.py:runlocal --workdir /tmp/mb
  python tools/merge_benchmark.py --config configs/merge_benchmark.py --workdir runs/mb \\
      --config.benchmark.seeds=0 --config.benchmark.methods=individual,ties,adamerging_layer

Writes `<workdir>/results.md`, `results.json`, `bars.png`, `lambdas.png`; training stages are
cached under `<workdir>/cache` by a hash of their config (see `jaxmtl.merging.benchmark`), so
a second run after a change to merging only merges and evaluates. With `--compilation_cache`
(default on) XLA programs are kept in `<workdir>/xla_cache` as well.
"""
from __future__ import annotations

import pathlib
import sys
import time


def main():
  from absl import app, flags
  from ml_collections import config_flags
  cfg = config_flags.DEFINE_config_file("config", None, "configs/merge_benchmark.py[:arg]",
                                        lock_config=False)
  workdir = flags.DEFINE_string("workdir", None, "output directory (stages cached inside)")
  cache = flags.DEFINE_bool("compilation_cache", True,
                            "persistent XLA cache in <workdir>/xla_cache")
  progress = flags.DEFINE_bool("progress", True, "show AdaMerging progress bars")
  flags.mark_flags_as_required(["config", "workdir"])

  def _main(argv):
    del argv
    import tensorflow_datasets as tfds

    from jaxmtl.cli import common
    common.quiet_logging(flags.FLAGS["verbosity"].present)
    tfds.disable_progress_bar()  # embedded datasets build on first use; one line each is enough
    if cache.value:
      common.enable_compilation_cache(pathlib.Path(workdir.value) / "xla_cache", 0.5)
    from jaxmtl import config as config_lib
    from jaxmtl.merging import benchmark
    t0 = time.time()
    try:
      results = benchmark.run(cfg.value, workdir.value, progress=progress.value)
    except config_lib.ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    print(benchmark.markdown(results))
    print(f"# {time.time() - t0:.0f} s; {workdir.value}/results.md, results.json, bars.png, "
          "lambdas.png")
  app.run(_main)


if __name__ == "__main__":
  main()
