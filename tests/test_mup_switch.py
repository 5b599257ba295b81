"""`--config.mup.name=...` switches every model family (MLP, ViT, transformer LM) between SP,
μP (multiplier form), μP (TP-V Table 3 form) and depth-μP, through the real command-line
parser (ml_collections ``config_flags``) and the same config path as ``jaxmtl-train``; the
models then carry the rules of the μP tables in docs/mup.md (hidden lr ÷ m, one μ-readout
per task head, attention 1/d, depth-μP branch multiplier)."""
import math
import pathlib

import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from jaxmtl import config as config_lib
from jaxmtl import tasks as tasks_lib
from jaxmtl.models import make_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = ("sp", "mup", "mup_tp5", "depth_mup")
DATA = {"mlp": "jaxmtl_multidigits", "vit": "jaxmtl_multidigits", "transformer": "jaxmtl_bytes"}
WIDTH, BASE, DEPTH, BASE_DEPTH, HEADS = 64, 32, 2, 1, 4  # m = 2, depth ratio 2


def _cli(argv):
  """Parses `--config=... --config.a.b=v` exactly as jaxmtl.cli.train does."""
  argv = ["jaxmtl-train", f"--config={ROOT / 'tests' / 'configs' / 'tiny.py'}", *argv]
  fv = flags.FlagValues()
  # sys_argv: config_flags registers the `--config.a.b` override flags it finds there.
  cfg = config_flags.DEFINE_config_file("config", None, "config", flag_values=fv,
                                        lock_config=True, sys_argv=argv)
  fv(argv)
  return config_lib.experiment_config(cfg.value)


def _model(family, name, data_dir, **extra):
  argv = [f"--config.model.name={family}", f"--config.data.name={DATA[family]}",
          f"--config.data.data_dir={data_dir}", f"--config.mup.name={name}",
          f"--config.model.width={WIDTH}", f"--config.model.base_width={BASE}",
          f"--config.model.depth={DEPTH}", f"--config.model.num_heads={HEADS}",
          f"--config.mup.base_depth={BASE_DEPTH}", "--config.model.max_len=32"]
  argv += [f"--config.{k}={v}" for k, v in extra.items()]
  cfg = _cli(argv)
  spec = tasks_lib.data_spec(cfg.data.name, cfg.data.data_dir)
  outputs = {t.name: t.num_outputs for t in spec.tasks}
  model = nnx.eval_shape(lambda: make_model(cfg.model, spec.input_shape, outputs, cfg.mup,
                                            nnx.Rngs(0)))
  return cfg, model


def _rule(p):
  return p.get_metadata()["mup"]


@pytest.mark.parametrize("family", sorted(DATA))
@pytest.mark.parametrize("name", NAMES)
def test_cli_switches_parametrization(family, name, data_dir):
  cfg, model = _model(family, name, data_dir)
  assert cfg.mup.name == name and cfg.model.base_width == BASE
  m = WIDTH / BASE
  mu = name != "sp"
  if family == "mlp":
    hidden, blocks = model.layers[1].kernel, []
  else:
    blocks = list(model.blocks)
    hidden = blocks[0].mlp.up.kernel
  h = _rule(hidden)
  assert h.role == "hidden"
  assert h.lr_scale == pytest.approx(1 / m if mu else 1.0)
  assert h.init_std == pytest.approx(1 / math.sqrt(hidden.shape[0]))
  heads = model.heads.heads
  assert sorted(heads) == sorted(t.name for t in tasks_lib.data_spec(DATA[family]).tasks)
  for head in heads.values():  # one μ-readout per task head
    r = _rule(head.kernel)
    assert r.role == "output"
    want_mult = 1 / m if name in ("mup", "depth_mup") else 1.0
    assert head.multiplier == r.multiplier == pytest.approx(want_mult)
    want_std = {"sp": 1 / math.sqrt(WIDTH), "mup_tp5": 1 / math.sqrt(BASE) / m}.get(
        name, 1 / math.sqrt(BASE))
    assert r.init_std == pytest.approx(want_std)
  for block in blocks:
    d, d0 = WIDTH // HEADS, BASE // HEADS
    assert block.attn.scale == pytest.approx(math.sqrt(d0) / d if mu else 1 / math.sqrt(d))
    r = DEPTH / BASE_DEPTH
    assert block.branch == pytest.approx(1 / r if name == "depth_mup" else 1.0)  # α = 1
    q = _rule(block.attn.query.kernel)
    assert q.eps_scale == pytest.approx(1 / r if name == "depth_mup" else 1.0)


def test_cli_depth_mup_options(data_dir):
  """α = 1/2 and zero-init readout/query from the command line."""
  _, model = _model("transformer", "depth_mup", data_dir,
                    **{"mup.depth_alpha": 0.5, "mup.zero_readout": True, "mup.zero_query": True})
  block = model.blocks[0]
  assert block.branch == pytest.approx((DEPTH / BASE_DEPTH) ** -0.5)
  assert _rule(block.attn.query.kernel).init_std == 0.0
  assert _rule(block.attn.key.kernel).init_std > 0.0
  assert _rule(block.mlp.up.kernel).lr_scale == pytest.approx(
      BASE / WIDTH * (DEPTH / BASE_DEPTH) ** -0.5)
  assert all(_rule(h.kernel).init_std == 0.0 for h in model.heads.heads.values())
  # Outside residual branches depth does not enter.
  assert _rule(model.embed.embedding).lr_scale == 1.0


def test_depth_mup_without_base_depth_is_mup(data_dir):
  """base_depth unset (None): the model is its own base depth, like base_width unset."""
  argv = ["--config.model.name=transformer", "--config.data.name=jaxmtl_bytes",
          "--config.mup.name=depth_mup", "--config.model.depth=3"]
  cfg = _cli(argv)
  assert cfg.mup.base_depth is None and cfg.mup.branch_multiplier(3) == 1.0
  with pytest.raises(config_lib.ConfigError, match="valid choices: sp, mup, mup_tp5, depth_mup"):
    _cli(["--config.mup.name=umup"])  # config_flags takes any string; validation is ours
