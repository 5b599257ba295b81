"""Commands that launch `jaxmtl.cli.train`: local, multi-process local, SLURM, TPU pod.

Pure functions: each returns the exact command lines (lists of argv, or script text)
that `launch/launch.py` prints with `--dry-run` or runs. A sweep (a product of
`key=v1,v2` overrides, or a config file's `sweep()` list) or a model ladder (a config
file's `ladder()` block, `jaxmtl.scaling.ladder`) expands into jobs, one workdir per job. Multi-host runs pass `--distributed`: jax.distributed.initialize()
detects SLURM (coordinator = first node of SLURM_JOB_NODELIST, process id =
SLURM_PROCID) and TPU pods by itself; locally the coordinator is given explicitly.
"""
from __future__ import annotations

import importlib.util
import itertools
import pathlib
import re
import shlex
from typing import Any, Sequence

Job = tuple[str, dict[str, str]]  # (workdir, {"optim.lr": "1e-3", ...})
TRAIN = ["python", "-m", "jaxmtl.cli.train"]


def parse_sweep(spec: str) -> list[dict[str, str]]:
  """'optim.lr=1e-3,3e-3 model.width=64,128' -> the 4 override dicts of the product."""
  axes = []
  for part in spec.split():
    key, sep, values = part.partition("=")
    if not sep or not key or not values or any(not v for v in values.split(",")):
      raise ValueError(f"bad sweep entry {part!r}: expected key=v1,v2,... (no spaces in values)")
    axes.append([(key, v) for v in values.split(",")])
  if not axes:
    raise ValueError("empty sweep: expected e.g. 'optim.lr=1e-3,3e-3 model.width=64,128'")
  return [dict(combo) for combo in itertools.product(*axes)]


def config_sweep(config: str) -> list[dict[str, str]]:
  """The list returned by `sweep(arg)` in a config file `file.py[:arg]` (values as strings)."""
  file, _, arg = config.partition(":")
  spec = importlib.util.spec_from_file_location(pathlib.Path(file).stem, file)
  if spec is None or not pathlib.Path(file).exists():
    raise ValueError(f"config file {file!r} not found")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{file} has no sweep(arg) function returning a list of override dicts")
  return [{k: str(v) for k, v in d.items()} for d in module.sweep(arg)]


def parse_value(text: Any) -> Any:
  """'64' -> 64, '1e-3' -> 0.001, '(1, 2)' -> (1, 2), 'true' -> True, 'mup' -> 'mup'
  (Python literals, true/false, else the string; non-strings pass through)."""
  import ast
  if not isinstance(text, str):
    return text
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def ladder_jobs(config: str, workdir: str, base_overrides: dict[str, str] | None = None,
                sweep: Sequence[dict[str, str]] | None = None) -> list[tuple[Job, Any]]:
  """(job, run) per run of the config file's `ladder(arg)` (`jaxmtl.scaling.ladder.expand`):
  workdir `workdir/<run name>` (e.g. `runs/l/w64_d2_tpp20`), the run's overrides as strings.
  `base_overrides` (--set) change the base config before the ladder is expanded."""
  from jaxmtl import config as config_lib
  from jaxmtl.scaling import ladder as ladder_lib
  base, spec = ladder_lib.load_ladder(config)
  if base_overrides:
    config_lib.apply_overrides(base, {k: parse_value(v) for k, v in base_overrides.items()})
  runs = ladder_lib.expand(base, spec, sweep)
  return [((f"{workdir.rstrip('/')}/{r.name}",
            {**(base_overrides or {}), **{k: str(v) for k, v in r.overrides.items()}}), r)
          for r in runs]


def jobs(workdir: str, overrides: Sequence[dict[str, str]] | None = None) -> list[Job]:
  """One job per override dict; a sweep's workdirs are `workdir/key=value,key=value`."""
  if not overrides:
    return [(workdir, {})]
  def name(o):
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(f"{k}={v}" for k, v in o.items()))
  return [(f"{workdir.rstrip('/')}/{name(o)}", dict(o)) for o in overrides]


def train_argv(config: str, workdir: str, overrides: dict[str, Any], *extra: str) -> list[str]:
  return [*TRAIN, f"--config={config}", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]


def local(config: str, job: Job) -> list[list[str]]:
  return [train_argv(config, job[0], job[1])]


def multiprocess(config: str, job: Job, *, processes: int, devices_per_process: int,
                 port: int, cpu: bool = True) -> list[list[str]]:
  """`processes` commands on this machine (run them together), one 'host' each."""
  if processes < 1 or devices_per_process < 1:
    raise ValueError("processes and devices_per_process must be >= 1")
  env = ["env", f"XLA_FLAGS=--xla_force_host_platform_device_count={devices_per_process}",
         "JAX_PLATFORMS=cpu"] if cpu else []
  return [env + train_argv(config, job[0], job[1], f"--coordinator_address=127.0.0.1:{port}",
                           f"--num_processes={processes}", f"--process_id={i}")
          for i in range(processes)]


def slurm_script(config: str, job: Job, *, nodes: int, gpus_per_node: int, job_name: str,
                 time: str = "24:00:00", partition: str | None = None,
                 setup: str = "source .venv/bin/activate") -> str:
  """An sbatch script: one task (process) per GPU; exit code 75 (preempted) requeues."""
  lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
           f"#SBATCH --ntasks-per-node={gpus_per_node}", f"#SBATCH --gpus-per-node={gpus_per_node}",
           f"#SBATCH --time={time}", "#SBATCH --requeue", "#SBATCH --signal=TERM@120",
           f"#SBATCH --output={job[0]}/slurm-%j.out"]
  if partition:
    lines.append(f"#SBATCH --partition={partition}")
  cmd = " ".join(shlex.quote(a) for a in train_argv(config, job[0], job[1], "--distributed"))
  lines += ["set -u", setup, f"mkdir -p {shlex.quote(job[0])}",
            "# jax.distributed.initialize() reads SLURM_JOB_NODELIST (coordinator: first node),",
            "# SLURM_NTASKS and SLURM_PROCID; each task sees its node's GPUs.",
            f"srun --kill-on-bad-exit=1 {cmd}", "rc=$?",
            "if [ $rc -eq 75 ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi", "exit $rc", ""]
  return "\n".join(lines)


def tpu(config: str, job: Job, *, name: str, zone: str, project: str | None = None,
        repo: str = "~/jaxmtl", source: str = ".", logs_to: str = "tpu_logs"
        ) -> dict[str, list[list[str]]]:
  """gcloud commands by stage: setup, sync, run, fetch_logs (every worker of the pod).

  The workdir should be a bucket (gs://...) so all hosts write one checkpoint tree.
  """
  base = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
  def ssh(command: str) -> list[str]:
    return [*base, "ssh", name, *where, "--worker=all", f"--command={command}"]
  run = " ".join(shlex.quote(a) for a in train_argv(config, job[0], job[1], "--distributed"))
  return {
      "setup": [ssh("python3 -m venv ~/venv && ~/venv/bin/pip install -U pip "
                    f"&& mkdir -p {repo}")],
      "sync": [[*base, "scp", "--recurse", source, f"{name}:{repo}", *where, "--worker=all"],
               ssh(f"cd {repo} && ~/venv/bin/pip install -e '.[tpu]'")],
      "run": [ssh(f"cd {repo} && source ~/venv/bin/activate && {run}")],
      "fetch_logs": [["gcloud", "storage", "cp", "--recursive", f"{job[0]}/logs", logs_to]
                     if job[0].startswith("gs://") else
                     [*base, "scp", "--recurse", f"{name}:{job[0]}/logs", logs_to, *where,
                      "--worker=all"]],
  }


def shell(argv: Sequence[str]) -> str:
  """One command line as a shell would take it (for dry runs and scripts)."""
  return " ".join(shlex.quote(a) for a in argv)
