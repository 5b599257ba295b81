"""Launchers: sweeps expand into one job (and workdir) each; dry runs print the exact commands."""
import importlib.util
import pathlib

import pytest

from jaxmtl import launch as L

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("launch_cli", ROOT / "launch" / "launch.py")
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)


def test_sweep_product_and_workdirs():
  sweep = L.parse_sweep("optim.lr=1e-3,3e-3 model.width=64,128")
  assert sweep == [{"optim.lr": "1e-3", "model.width": "64"},
                   {"optim.lr": "1e-3", "model.width": "128"},
                   {"optim.lr": "3e-3", "model.width": "64"},
                   {"optim.lr": "3e-3", "model.width": "128"}]
  jobs = L.jobs("runs/s/", sweep)
  assert [w for w, _ in jobs][1] == "runs/s/optim.lr=1e-3,model.width=128"
  assert len({w for w, _ in jobs}) == 4
  assert L.jobs("runs/one") == [("runs/one", {})]
  for bad in ("optim.lr", "optim.lr=", "a=1,,2", ""):
    with pytest.raises(ValueError, match="sweep"):
      L.parse_sweep(bad)


def test_config_file_sweep(tmp_path):
  f = tmp_path / "c.py"
  f.write_text("def get_config(arg=''):\n  return None\n\n"
               "def sweep(arg=''):\n  return [{'optim.lr': lr} for lr in (0.1, 0.2)]\n")
  assert L.config_sweep(f"{f}:x") == [{"optim.lr": "0.1"}, {"optim.lr": "0.2"}]
  (tmp_path / "n.py").write_text("def get_config(arg=''):\n  return None\n")
  with pytest.raises(ValueError, match="no sweep"):
    L.config_sweep(str(tmp_path / "n.py"))


def test_multiprocess_dry_run(capsys):
  rc = cli.main(["multiprocess", "--config", "c.py", "--workdir", "/w", "--processes", "2",
                 "--devices-per-process", "4", "--port", "1234", "--set", "seed=3", "--dry-run"])
  lines = capsys.readouterr().out.splitlines()
  assert rc == 0 and lines == [
      "env XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu python -m "
      f"jaxmtl.cli.train --config=c.py --workdir=/w --config.seed=3 "
      f"--coordinator_address=127.0.0.1:1234 --num_processes=2 --process_id={i} &"
      for i in range(2)]


def test_local_sweep_dry_run(capsys):
  assert cli.main(["local", "--config", "c.py:runlocal", "--workdir", "/w",
                   "--sweep", "optim.lr=0.1,0.2", "--dry-run"]) == 0
  assert capsys.readouterr().out.splitlines() == [
      f"python -m jaxmtl.cli.train --config=c.py:runlocal --workdir=/w/optim.lr={v} "
      f"--config.optim.lr={v}" for v in ("0.1", "0.2")]


def test_slurm_script():
  s = L.slurm_script("c.py", ("/shared/w", {"optim.lr": "0.1"}), nodes=4, gpus_per_node=8,
                     job_name="j", partition="gpu")
  for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
               "#SBATCH --requeue", "#SBATCH --partition=gpu",
               "srun --kill-on-bad-exit=1 python -m jaxmtl.cli.train --config=c.py "
               "--workdir=/shared/w --config.optim.lr=0.1 --distributed",
               'if [ $rc -eq 75 ]; then scontrol requeue "$SLURM_JOB_ID"; fi'):
    assert line in s.splitlines(), line


def test_tpu_commands():
  c = L.tpu("configs/x.py", ("gs://b/w", {}), name="pod", zone="us-east5-a", project="p")
  assert set(c) == {"setup", "sync", "run", "fetch_logs"}
  run = c["run"][0]
  assert run[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert "--worker=all" in run and "--zone=us-east5-a" in run and "--project=p" in run
  assert run[-1].endswith("python -m jaxmtl.cli.train --config=configs/x.py "
                          "--workdir=gs://b/w --distributed")
  assert c["sync"][0][4:7] == ["scp", "--recurse", "."]
  assert c["fetch_logs"] == [["gcloud", "storage", "cp", "--recursive", "gs://b/w/logs",
                              "tpu_logs"]]
