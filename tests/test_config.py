"""Config files build; overrides and bad keys/values give clear errors."""
import pathlib

import pytest

from jaxmtl import config as config_lib

TOOL_BLOCKS = ("sweep", "benchmark")
CONFIGS = sorted(pathlib.Path(__file__).resolve().parents[1].glob("configs/*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_every_config_builds(path, arg):
  cd = config_lib.load_config_file(f"{path}:{arg}" if arg else str(path))
  if "model" in cd:  # training experiments; tools' configs have their own schema
    for block in TOOL_BLOCKS:  # tools (e.g. tools/mutransfer.py) remove these before building
      if block in cd:
        del cd[block]
    exp = config_lib.experiment_config(cd)
    assert exp.train.steps > 0


def test_override_and_unknown_key():
  cd = config_lib.load_config_file("configs/quickstart.py")
  config_lib.apply_overrides(cd, {"model.width": 48, "optim.lr": 0.5})
  exp = config_lib.experiment_config(cd)
  assert exp.model.width == 48 and exp.optim.lr == 0.5
  with pytest.raises(config_lib.ConfigError, match=r"config.model.widht.*Did you mean 'width'"):
    config_lib.apply_overrides(cd, {"model.widht": 3})


def test_unknown_key_in_file_names_valid_keys():
  cd = config_lib.load_config_file("configs/quickstart.py")
  with cd.unlocked():
    cd.train.stepz = 3
  with pytest.raises(config_lib.ConfigError, match=r"'config.train.stepz'.*'steps'"):
    config_lib.experiment_config(cd)


def test_bad_literal_value_names_choices():
  cd = config_lib.load_config_file("configs/quickstart.py")
  cd.model.name = "resnet"
  with pytest.raises(config_lib.ConfigError, match=r"config.model.name.*'resnet'.*\['mlp', 'vit', 'transformer'\]"):
    config_lib.experiment_config(cd)


def test_bad_value_from_dataclass_validation_names_key():
  cd = config_lib.load_config_file("configs/quickstart.py")
  cd.mup.name = "mupp"
  with pytest.raises(config_lib.ConfigError, match=r"config.mup.*mupp.*sp"):
    config_lib.experiment_config(cd)


def test_wrong_type():
  d = config_lib.load_config_file("configs/quickstart.py").to_dict()
  d["train"]["steps"] = "many"   # ConfigDict itself refuses this; plain dicts reach us
  with pytest.raises(config_lib.ConfigError, match="config.train.steps.*integer.*many"):
    config_lib.experiment_config(d)


def test_cli_rejects_unknown_override(tmp_path):
  import subprocess, sys
  out = subprocess.run([sys.executable, "-m", "jaxmtl.cli.train", "--config",
                        "configs/quickstart.py", "--workdir", str(tmp_path),
                        "--config.model.widht=3"], capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.returncode != 0
  assert "widht" in out.stderr


def test_comma_separated_tuple_override():
  cd = config_lib.load_config_file("configs/quickstart.py")
  config_lib.apply_overrides(cd, {"data.mixture": ("jaxmtl_a, jaxmtl_b",), "data.tasks": ("x,y",)})
  exp = config_lib.experiment_config(cd)
  assert exp.data.mixture == ("jaxmtl_a", "jaxmtl_b") and exp.data.tasks == ("x", "y")
  assert exp.data.datasets == ("jaxmtl_a", "jaxmtl_b")


def test_mup_follows_the_optimizer_name_and_decay_mode():
  cd = config_lib.load_config_file("configs/quickstart.py")
  config_lib.apply_overrides(cd, {"optim.name": "adam", "optim.weight_decay_mode": "independent"})
  exp = config_lib.experiment_config(cd)
  assert exp.mup.optimizer == "adam" and exp.mup.weight_decay_mode == "independent"
