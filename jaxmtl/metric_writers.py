"""Metrics to JSONL and TensorBoard, a progress bar with ETA and throughput, MFU.

Only process 0 writes. TensorBoard events are written with tensorboardX (no
TensorFlow needed). (Named `metric_writers` rather than `logging` so it is
never confused with the standard library's module.)
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Mapping

import jax

# Peak dense bf16 FLOP/s per device for MFU (vendor datasheets; dense, no sparsity).
# Dense bf16 peaks from the datasheets. "cpu" has no datasheet peak: it is the f32 throughput of
# a large jitted matmul on the 2-core CI VM (270 GFLOP/s, jax 0.10.2), so a CPU MFU reads as a
# fraction of what XLA's best kernel reaches there (tools/bench_train.py measures it per run).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5p": 459e12,
              "TPU v5 lite": 197e12, "TPU v4": 275e12, "cpu": 270e9}


def peak_flops_per_device(device: jax.Device | None = None) -> float:
  """Best-known peak FLOP/s of a device (CPU: a measured matmul, see PEAK_FLOPS)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "cpu")
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return PEAK_FLOPS["cpu"]


class MetricWriter:
  """Appends {"step": s, **metrics} lines to metrics.jsonl and TensorBoard scalars."""

  def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")
      if tensorboard:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
    if not self.active:
      return
    row = {f"{prefix}{k}": float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **row}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in row.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class Throughput:
  """Steps/s, examples/s, tokens/s and MFU over a window of steps."""

  def __init__(self, examples_per_step: int, tokens_per_step: int, flops_per_step: float,
               num_devices: int, peak: float):
    self.examples, self.tokens, self.flops = examples_per_step, tokens_per_step, flops_per_step
    self.peak_total = peak * num_devices
    self._t, self._step = time.perf_counter(), None

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    if self._step is None:
      self._t, self._step = now, step
      return {}
    steps, dt = step - self._step, now - self._t
    self._t, self._step = now, step
    if steps <= 0 or dt <= 0:
      return {}
    sps = steps / dt
    out = {"steps_per_sec": sps, "examples_per_sec": sps * self.examples}
    if self.tokens:
      out["tokens_per_sec"] = sps * self.tokens
    if self.flops:
      out["mfu"] = sps * self.flops / self.peak_total
    return out
