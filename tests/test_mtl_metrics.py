"""Tests for jaxmtl.mtl.metrics.delta_m against hand-computed values."""

import numpy as np
import pytest

from jaxmtl.mtl.metrics import delta_m


def test_delta_m_hand_computed():
  # seg mIoU (higher better): 0.40 vs 0.38 -> -(0.02/0.38); depth abs err (lower better):
  # 0.50 vs 0.55 -> (-0.05/0.55); normal mean angle (lower better): 25 vs 24 -> 1/24.
  metrics = {"seg/miou": 0.40, "depth/abs": 0.50, "normal/mean": 25.0}
  base = {"seg/miou": 0.38, "depth/abs": 0.55, "normal/mean": 24.0}
  hib = {"seg/miou": True, "depth/abs": False, "normal/mean": False}
  expect = 100 / 3 * (-(0.02 / 0.38) + (-0.05 / 0.55) + 1 / 24)
  assert delta_m(metrics, base, hib) == pytest.approx(expect, rel=1e-12)
  assert expect == pytest.approx(-3.3958, abs=1e-4)


def test_delta_m_identity_and_single_metric():
  m = {"a": 2.0, "b": 3.0}
  assert delta_m(m, m, {"a": True, "b": False}) == 0.0
  assert delta_m({"acc": 0.9}, {"acc": 0.8}, {"acc": True}) == pytest.approx(-12.5)
  assert delta_m({"err": 0.9}, {"err": 0.8}, {"err": np.bool_(False)}) == pytest.approx(12.5)


def test_delta_m_bad_inputs():
  with pytest.raises(ValueError, match="keys"):
    delta_m({"a": 1.0}, {"b": 1.0}, {"a": True})
  with pytest.raises(ValueError, match="non-zero"):
    delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})
  with pytest.raises(TypeError, match="bool"):
    delta_m({"a": 1.0}, {"a": 2.0}, {"a": "yes"})
  with pytest.raises(ValueError, match="empty"):
    delta_m({}, {}, {})
