"""Setup shared by the command-line tools (entry points call these; nothing runs on import)."""
from __future__ import annotations

import os
import pathlib
import sys


def quiet_logging(verbosity_given: bool) -> None:
  """absl logging at WARNING unless the user passed ``--verbosity``: TFDS and orbax log every
  dataset load and checkpoint at INFO, which buries a tool's own progress lines."""
  if not verbosity_given:
    from absl import logging
    logging.set_verbosity(logging.WARNING)


def enable_compilation_cache(path: str | pathlib.Path, min_compile_time_secs: float = 0.0) -> bool:
  """Persistent XLA compilation cache in ``path``: runs of a sweep or benchmark that differ
  only in values (seed, learning rate) compile their programs once, also across restarts.

  Returns False (after a warning on stderr) when ``path`` cannot be created: a missing cache
  costs compile time, never the run.
  """
  import jax
  path = pathlib.Path(path).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    print(f"warning: no compilation cache ({path}: {e})", file=sys.stderr)
    return False
  jax.config.update("jax_compilation_cache_dir", str(path.resolve()))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return True


def default_cache_dir() -> pathlib.Path | None:
  """Where the CLIs keep compiled XLA programs by default: ``None`` when the user already set
  ``JAX_COMPILATION_CACHE_DIR`` (jax then uses it as it is), else
  ``$XDG_CACHE_HOME/jaxmtl/xla`` (``~/.cache/jaxmtl/xla``)."""
  import jax
  if jax.config.jax_compilation_cache_dir:
    return None
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "jaxmtl" / "xla"
