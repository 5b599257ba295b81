"""Mixtures of datasets in the train loop: layout, proportions, masked per-task losses, eval."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmtl import tasks as tasks_lib
from jaxmtl.data import pipeline
from tests.helpers import tiny_config
from tests.test_sharding import _run_steps

FAKE = "jaxmtl_digitsflip"  # digits mirrored left-right, labels (9 - digit): a second domain


class _Flipped:
  """A random-access source over another one: images mirrored, labels reversed."""

  def __init__(self, base):
    self._base = base

  def __len__(self):
    return len(self._base)

  def __getitem__(self, i):
    ex = dict(self._base[i])
    ex["image"] = np.ascontiguousarray(ex["image"][:, ::-1])
    ex["label"] = 9 - ex["label"]
    return ex


@pytest.fixture
def two_domains(monkeypatch, data_dir):
  """Registers FAKE next to jaxmtl_digits (same 8x8x1 input shape) for this test."""
  real_spec, real_source = tasks_lib.data_spec, pipeline.get_source

  def spec(name, data_dir=None, select=None):
    if name == FAKE:
      return dataclasses.replace(real_spec("jaxmtl_digits", data_dir), name=FAKE)
    return real_spec(name, data_dir, select)

  def source(name, split, data_dir=None):
    if name == FAKE:
      return _Flipped(real_source("jaxmtl_digits", split, data_dir))
    return real_source(name, split, data_dir)

  monkeypatch.setattr(tasks_lib, "data_spec", spec)
  monkeypatch.setattr(pipeline, "get_source", source)
  return data_dir


def _mixture_cfg(data_dir, **over):
  over = {"data.mixture": ("jaxmtl_digits", FAKE), "data.batch_size": 64, **over}
  return tiny_config(data_dir, **over)


def test_mixture_spec_names_tasks_and_rejects_bad_members(two_domains):
  spec, members = tasks_lib.mixture_spec(("jaxmtl_digits", FAKE))
  assert [t.name for t in spec.tasks] == ["digits", "digitsflip"]
  assert [m.name for m in members] == ["jaxmtl_digits", FAKE]
  with pytest.raises(ValueError, match="share one input shape.*jaxmtl_mnist1d"):
    tasks_lib.mixture_spec(("jaxmtl_digits", "jaxmtl_mnist1d"))
  with pytest.raises(ValueError, match="classification datasets only"):
    tasks_lib.mixture_spec(("jaxmtl_digits", "jaxmtl_bytes"))
  with pytest.raises(ValueError, match="at least two distinct"):
    tasks_lib.mixture_spec(("jaxmtl_digits", "jaxmtl_digits"))


def test_mixed_batches_follow_proportions_and_carry_missing_labels(two_domains):
  cfg = _mixture_cfg(two_domains, **{"data.mixture_mode": "uniform"})
  data = pipeline.run_data(cfg.data, cfg.seed)
  assert data.probabilities == {"jaxmtl_digits": 0.5, FAKE: 0.5}
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  it = pipeline.train_iterator(data, 64, mesh)
  batch = jax.device_get(next(it))
  a, b = batch["label_digits"], batch["label_digitsflip"]
  assert batch["inputs"].dtype == np.float32 and batch["inputs"].max() <= 1.0
  assert ((a >= 0) != (b >= 0)).all()          # each example has exactly one task's label
  assert (a >= 0).sum() == (b >= 0).sum() == 32  # uniform: half each, every batch
  # Deterministic and checkpointable: the same position gives the same batch.
  it2 = pipeline.train_iterator(pipeline.run_data(cfg.data, cfg.seed), 64, mesh)
  it2.set_state(it.get_state())
  np.testing.assert_array_equal(jax.device_get(next(it))["inputs"],
                                jax.device_get(next(it2))["inputs"])


def test_unlabelled_examples_do_not_count():
  tasks = (tasks_lib.Task("a", "a", 3), tasks_lib.Task("b", "b", 3))
  logits = {"a": jnp.array([[5.0, 0, 0], [0, 5.0, 0]]), "b": jnp.array([[0, 0, 5.0]] * 2)}
  labels = {"a": jnp.array([0, -1]), "b": jnp.array([-1, -1])}
  losses, stats = tasks_lib.task_losses(tasks, logits, labels)
  expected_a = -jax.nn.log_softmax(logits["a"][0])[0]
  np.testing.assert_allclose(losses, [expected_a, 0.0], rtol=1e-4)
  assert float(stats["a/count"]) == 1 and float(stats["a/correct"]) == 1
  assert float(stats["b/count"]) == 0


def test_mixture_trains_with_an_aggregator_and_evaluates_each_task_on_its_data(two_domains):
  cfg = _mixture_cfg(two_domains, **{"mtl.aggregator": "upgrad"})
  losses, params = _run_steps(cfg, jax.devices()[:1], 3)
  assert losses.shape == (3, 2) and np.isfinite(losses).all()
  assert set(params["heads"]["heads"]) == {"digits", "digitsflip"}
  from jaxmtl.data import mixture
  from jaxmtl.train import loop
  from jaxmtl.train.evaluate import make_evaluator
  from jaxmtl.train.step import make_eval_step
  exp = loop.build(cfg, jax.devices()[:1])
  params = loop.init_state(exp).params

  def evaluate(source):
    return make_evaluator(make_eval_step(exp.graphdef, exp.spec), exp.spec, source, exp.mesh,
                          100, exp.shardings.params)(params)

  both = evaluate(exp.data.eval)
  _, members = tasks_lib.mixture_spec(cfg.data.mixture)
  digits_only = mixture.concatenated_dataset(
      [pipeline.get_source("jaxmtl_digits", "test")],
      [mixture.example_transform(members[0], exp.spec)])
  alone = evaluate(digits_only)
  assert len(exp.data.eval) == 2 * len(digits_only)
  # The digits task is scored on the digits examples only, whatever else is in the split.
  assert both["digits/accuracy"] == pytest.approx(alone["digits/accuracy"], abs=1e-6)
  assert both["digits/loss"] == pytest.approx(alone["digits/loss"], rel=1e-5)
  assert alone["digitsflip/accuracy"] == 0.0  # no labelled example: count 0


def test_mixture_ghost_gramian_equals_full_jacobian(two_domains):
  """Masked per-task losses (each example labels one task) through the ghost mode."""
  runs = [_run_steps(_mixture_cfg(two_domains, **{"mtl.aggregator": "upgrad",
                                                 "mtl.jacobian": jac}), jax.devices()[:1], 2)
          for jac in ("full", "ghost")]
  (lf, pf), (lg, pg) = runs
  np.testing.assert_allclose(lg, lf, rtol=2e-5, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), pg, pf)
