"""Setup shared by the command-line tools (entry points call these; nothing runs on import)."""
from __future__ import annotations

import pathlib


def quiet_logging(verbosity_given: bool) -> None:
  """absl logging at WARNING unless the user passed ``--verbosity``: TFDS and orbax log every
  dataset load and checkpoint at INFO, which buries a tool's own progress lines."""
  if not verbosity_given:
    from absl import logging
    logging.set_verbosity(logging.WARNING)


def enable_compilation_cache(path: str | pathlib.Path, min_compile_time_secs: float = 0.0) -> None:
  """Persistent XLA compilation cache in ``path``: runs of a sweep or benchmark that differ
  only in values (seed, learning rate) compile their programs once, also across restarts."""
  import jax
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(path).resolve()))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
