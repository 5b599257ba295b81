"""Orbax checkpoints of the train state plus the data-iterator state.

A checkpoint at step s holds `state` (the TrainState, restored onto any mesh
from an abstract target that carries shardings) and `data` (the iterator's
JSON state), so a run started again in the same workdir continues with the
same parameters and the same next batch.

Safety:
- Orbax writes each step into `<step>.orbax-checkpoint-tmp*` and renames it
  when the save is complete, so a save interrupted by SIGKILL is never listed
  (`latest_step`, `all_steps` skip the temporary directory).
- A finalised checkpoint that cannot be read (truncated or deleted files)
  raises `CheckpointError` naming the step; `restore_latest` then logs a
  warning, moves that step aside to `<step>.corrupt` (orbax ignores it) and
  falls back to the previous step, all processes agreeing on which one.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint step exists but could not be restored."""

  def __init__(self, step: int, directory: pathlib.Path, cause: BaseException | str):
    detail = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
    super().__init__(f"checkpoint at step {step} in {directory} could not be restored "
                     f"({str(detail)[:500]})")
    self.step = step


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the two items we save."""

  def __init__(self, directory: str | pathlib.Path, *, save_every: int, keep: int,
               async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    self.save_every = max(int(save_every), 1)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=self.save_every, max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    """Saves when `step` is on the interval (or `force`); returns whether it saved."""
    if not force and step % self.save_every:
      return False  # orbax alone would also save the first step of a run
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores onto the shardings carried by `abstract_state` (any mesh shape or device count).

    Raises `CheckpointError` (naming the step) when the step is absent or unreadable.
    """
    if step not in self.all_steps():
      raise CheckpointError(step, self.directory, f"no such step; have {self.all_steps()}")
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise ValueError, OSError, KeyError, ...
      raise CheckpointError(step, self.directory, e) from e
    return out["state"], dict(out["data"])

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, data) of the newest readable checkpoint; None when there is none.

    A step that fails to restore on any process is logged, moved aside to
    `<step>.corrupt` and the previous one is tried. Raises `CheckpointError` when
    checkpoints exist but none is readable (rather than silently starting over).
    """
    steps = sorted(self.all_steps(), reverse=True)
    errors = []
    for step in steps:
      try:
        state, data = self.restore(step, abstract_state)
        ok = True
      except CheckpointError as e:
        errors.append(str(e))
        ok = False
      if _all_processes(ok):
        return step, state, data
      log.warning("%s; falling back to an earlier checkpoint",
                  errors[-1] if not ok else f"checkpoint at step {step} failed on another process")
      self._quarantine(step)
    if steps:
      raise CheckpointError(steps[-1], self.directory,
                            "no readable checkpoint among steps " + str(steps) + ": "
                            + " | ".join(errors))
    return None

  def _quarantine(self, step: int) -> None:
    """Moves step `step` to `<step>.corrupt` (kept for inspection) and re-reads the steps."""
    if jax.process_index() == 0:
      src = self.directory / str(step)
      if src.exists():
        dst = self.directory / f"{step}.corrupt"
        n = 1
        while dst.exists():
          dst, n = self.directory / f"{step}.corrupt{n}", n + 1
        src.rename(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"jaxmtl_quarantine_{step}")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _all_processes(ok: bool) -> bool:
  """True when `ok` holds on every process (a no-op on one process)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))) == 1)
