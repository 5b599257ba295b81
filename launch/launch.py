"""Launch jaxmtl training locally, as several local processes, on SLURM, or on a TPU pod.

  python launch/launch.py local --config configs/quickstart.py:runlocal --workdir runs/q
  python launch/launch.py multiprocess --processes 2 --devices-per-process 4 --config ... --workdir ...
  python launch/launch.py slurm --nodes 2 --gpus-per-node 8 --config ... --workdir /shared/runs/x
  python launch/launch.py tpu --name my-v5p --zone us-east5-a --config ... --workdir gs://b/runs/x
Every launcher takes --dry-run (print the exact commands, run nothing), --set key=value
(overrides) and --sweep 'optim.lr=1e-3,3e-3 model.width=64,128' or --config-sweep (the config
file's sweep(arg)): one job, and one workdir, per combination. --ladder expands the config
file's ladder(arg) (a scaling-law model ladder, jaxmtl.scaling.ladder) into one job per run,
WORKDIR/<run name>, each with its ladder_run.json; `local` skips runs already finished.
"""
from __future__ import annotations

import argparse
import pathlib
import socket
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jaxmtl import launch as L  # noqa: E402


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  sub = p.add_subparsers(dest="mode", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--config", required=True, help="config file[:arg]")
  common.add_argument("--workdir", required=True, help="run directory (a sweep's parent)")
  common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  common.add_argument("--sweep", default=None, help="'k=v1,v2 k2=w1,w2' (product)")
  common.add_argument("--config-sweep", action="store_true", help="use the config's sweep(arg)")
  common.add_argument("--ladder", action="store_true",
                      help="one job per run of the config's ladder(arg) (crossed with a sweep)")
  common.add_argument("--dry-run", action="store_true", help="print the commands only")
  sub.add_parser("local", parents=[common])
  m = sub.add_parser("multiprocess", parents=[common])
  m.add_argument("--processes", type=int, default=2)
  m.add_argument("--devices-per-process", type=int, default=4)
  m.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  m.add_argument("--gpu", action="store_true", help="real devices, no simulated CPU devices")
  s = sub.add_parser("slurm", parents=[common])
  s.add_argument("--nodes", type=int, required=True)
  s.add_argument("--gpus-per-node", type=int, default=8)
  s.add_argument("--partition", default=None)
  s.add_argument("--time", default="24:00:00")
  s.add_argument("--setup", default="source .venv/bin/activate")
  t = sub.add_parser("tpu", parents=[common])
  t.add_argument("--name", required=True)
  t.add_argument("--zone", required=True)
  t.add_argument("--project", default=None)
  t.add_argument("--stages", default="setup,sync,run,fetch_logs")
  return p


def _jobs(args) -> list[tuple[L.Job, object]]:
  """(job, ladder run or None) per job."""
  base = dict(kv.split("=", 1) for kv in args.set)
  if args.sweep and args.config_sweep:
    raise SystemExit("error: give --sweep or --config-sweep, not both")
  sweep = L.parse_sweep(args.sweep) if args.sweep else (
      L.config_sweep(args.config) if args.config_sweep else None)
  if args.ladder:
    return L.ladder_jobs(args.config, args.workdir, base, sweep)
  return [((w, {**base, **o}), None) for w, o in L.jobs(args.workdir, sweep)]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    jobs = _jobs(args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  rc = 0
  for i, (job, run) in enumerate(jobs):
    if run is not None:
      from jaxmtl.scaling import ladder as ladder_lib
      if args.mode == "local" and ladder_lib.status(job[0], run.steps) == "done":
        print(f"# {job[0]}: finished, skipped")
        continue
      if not args.dry_run:
        ladder_lib.write_record(job[0], run)  # for ladder.collect, wherever the job runs
    if args.mode == "slurm":
      script = L.slurm_script(args.config, job, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                              job_name=f"jaxmtl-{i}", time=args.time, partition=args.partition,
                              setup=args.setup)
      path = pathlib.Path(job[0]) / "job.sbatch"
      print(f"# {path}\n{script}" if args.dry_run else f"sbatch {path}")
      if not args.dry_run:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        rc |= subprocess.call(["sbatch", str(path)])
      continue
    if args.mode == "local":
      groups = [L.local(args.config, job)]
    elif args.mode == "multiprocess":
      groups = [L.multiprocess(args.config, job, processes=args.processes,
                               devices_per_process=args.devices_per_process,
                               port=args.port or _free_port(), cpu=not args.gpu)]
    else:
      stages = L.tpu(args.config, job, name=args.name, zone=args.zone, project=args.project)
      groups = [[c] for s in args.stages.split(",") for c in stages[s]]
    for cmds in groups:  # commands in a group run together (the processes of one run)
      for c in cmds:
        print(L.shell(c) + (" &" if len(cmds) > 1 else ""))
      if not args.dry_run:
        procs = [subprocess.Popen(c) for c in cmds]
        rc |= max(p.wait() for p in procs)
  return rc


if __name__ == "__main__":
  sys.exit(main())
