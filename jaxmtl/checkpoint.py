"""Orbax checkpoints of the train state plus the data-iterator state.

A checkpoint at step s holds `state` (the TrainState, restored onto any mesh
from an abstract target that carries shardings) and `data` (the iterator's
JSON state), so a run started again in the same workdir continues with the
same parameters and the same next batch.

Orbax writes each step to a temporary directory and renames it when the save
is complete (finalised), so an interrupted save is never taken as the latest.
"""
from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the two items we save."""

  def __init__(self, directory: str | pathlib.Path, *, save_every: int, keep: int,
               async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(save_every), 1), max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    """Saves when `step` is on the interval (or `force`); returns whether it saved."""
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores onto the shardings carried by `abstract_state` (any mesh shape)."""
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out["state"], dict(out["data"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
