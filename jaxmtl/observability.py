"""Per-process logs, heartbeats with step times, and a check that processes agree.

Every process appends to `workdir/logs/process_{i}.log`: a start line (host,
devices, config and code fingerprints), a heartbeat every `every` steps with
its mean step time over the window (and, from process 0, the slowest process's),
and an end line. A straggler shows as the process with the largest step time; a
hung process as the log whose last heartbeat is oldest. Metrics proper are
written by process 0 only (`metric_writers.MetricWriter`).

`check_processes_agree` compares a hash of the resolved config and of the
jaxmtl source code across processes and raises a clear error when they differ
(a host with stale code or a different config would otherwise fail later with an
obscure collective error, or silently train something else).
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import time
from typing import Any

import jax
import numpy as np

import jaxmtl
from jaxmtl import config as config_lib

_PACKAGE_DIR = pathlib.Path(jaxmtl.__file__).resolve().parent


def code_fingerprint(package_dir: pathlib.Path = _PACKAGE_DIR) -> str:
  """sha256 over jaxmtl's version and every .py file under the package (paths + contents)."""
  h = hashlib.sha256(jaxmtl.__version__.encode())
  for path in sorted(package_dir.rglob("*.py")):
    h.update(str(path.relative_to(package_dir)).encode())
    h.update(path.read_bytes())
  return h.hexdigest()


def config_fingerprint(cfg: Any) -> str:
  """sha256 of the resolved config's JSON (the same text as the workdir's config.json)."""
  return hashlib.sha256(config_lib.to_json(cfg).encode()).hexdigest()


def check_processes_agree(fingerprints: dict[str, str]) -> None:
  """Raises ValueError naming the item and the processes that differ from process 0.

  `fingerprints` maps a name ("config", "code") to a hex digest. A no-op on one process;
  otherwise one small all-gather per item (call it on every process).
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  for name, digest in fingerprints.items():
    mine = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 32]
    differ = [p for p in range(len(every)) if not np.array_equal(every[p], every[0])]
    if differ:
      raise ValueError(
          f"processes disagree on the {name}: process 0 has {every[0].tobytes().hex()[:12]}, "
          f"process(es) {differ} have "
          f"{sorted({every[p].tobytes().hex()[:12] for p in differ})}. Run the same jaxmtl code "
          f"and the same config (file and overrides) on every host.")


class ProcessLog:
  """Appends start / heartbeat / end lines to `workdir/logs/process_{i}.log`."""

  def __init__(self, workdir: str | pathlib.Path, *, every: int, fingerprints: dict[str, str]):
    if every <= 0:
      raise ValueError(f"heartbeat interval must be positive, got {every!r}")
    self.index, self.count = jax.process_index(), jax.process_count()
    self.path = pathlib.Path(workdir) / "logs" / f"process_{self.index}.log"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    self.every = every
    self._t, self._step = None, None
    fp = " ".join(f"{k}={v[:12]}" for k, v in fingerprints.items())
    self.write(f"start process={self.index}/{self.count} host={socket.gethostname()} "
               f"pid={os.getpid()} devices={jax.device_count()} "
               f"local_devices={jax.local_device_count()} {fp}")

  def write(self, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    self._file.write(f"{stamp} {message}\n")
    self._file.flush()

  def heartbeat(self, step: int) -> float | None:
    """Call after every step; every `every` steps logs the mean step time (seconds).

    With several processes, the step times are all-gathered (every process must call
    this at the same steps) and the slowest process is named. Returns this process's
    mean step time when a line was written.
    """
    now = time.perf_counter()
    if self._t is None:
      self._t, self._step = now, step
      return None
    if step % self.every or step == self._step:
      return None
    dt = (now - self._t) / (step - self._step)
    self._t, self._step = now, step
    line = f"heartbeat step={step} process={self.index} step_time_s={dt:.4f}"
    if self.count > 1:
      from jax.experimental import multihost_utils
      times = np.asarray(multihost_utils.process_allgather(np.float32(dt)))
      line += f" max_step_time_s={times.max():.4f} slowest_process={int(times.argmax())}"
    self.write(line)
    return dt

  def close(self, status: str = "end") -> None:
    if not self._file.closed:
      self.write(f"{status} process={self.index}")
      self._file.close()


def any_process(flag: bool) -> bool:
  """True when `flag` is set on any process (e.g. SIGTERM reached only some hosts).

  One tiny all-gather per call with several processes, so every process must call it
  at the same steps; free on one process.
  """
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.max(multihost_utils.process_allgather(np.int32(bool(flag)))))
