"""Benchmark: ``jaxmtl-merge`` end to end on checkpoint files, against reading those files.

Writes a transformer-shaped f32 model and ``--tasks`` fine-tunes (``tools/bench_merge.py``'s
shapes) as safetensors into ``--workdir``, then times, each in a fresh process as a user runs
it, over ``--reps`` alternating rounds:

* ``read``: every leaf of every file read once with ``jaxmtl.merging.io.LeafReader`` (the
  floor: any merge from these files reads at least this);
* ``streaming``: ``--config.streaming=true`` (leaf by leaf from disk; global TIES: radix-select
  threshold, sign pass, merge pass);
* ``in_memory_cold``: ``--config.streaming=false`` with an empty compilation cache;
* ``in_memory_warm``: the same with the cache the previous case filled.

One JSON line per case: median seconds of the whole process (``wall_s``), the CLI's own
``seconds``, its report's phase timings, and the ratio of ``wall_s`` to ``read`` of the same
rounds. All cases must write the same bytes (checked).

Usage::

  OPENBLAS_NUM_THREADS=1 python tools/bench_merge_cli.py --params 25e6 --reps 3
"""
from __future__ import annotations

import argparse
import filecmp
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

_READ = r"""
import sys
from jaxmtl.merging import io
for p in sys.argv[1:]:
  with io.open_leaves(p) as r:
    for k in r.keys():
      r.read(k)
"""


def _write(workdir: pathlib.Path, params: float, tasks: int) -> list[pathlib.Path]:
  sys.path.insert(0, str(ROOT / "tools"))
  import numpy as np
  import bench_merge  # pylint: disable=import-outside-toplevel
  from jaxmtl.merging import io
  pre, fts = bench_merge.make_models(bench_merge.transformer_shapes(params), tasks)
  paths = [workdir / "base.safetensors"] + [workdir / f"ft{i}.safetensors" for i in range(tasks)]
  for p, tree in zip(paths, [pre] + fts):
    io.save(p, {k: np.asarray(v) for k, v in tree.items()})
  return paths


def _timed(cmd: list[str]) -> tuple[float, str]:
  t0 = time.perf_counter()
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  dt = time.perf_counter() - t0
  if r.returncode:
    raise RuntimeError(f"{cmd[:4]}... failed:\n{r.stderr[-2000:]}")
  return dt, r.stdout


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--params", type=float, default=25e6)
  ap.add_argument("--tasks", type=int, default=8)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--method", default="ties")
  ap.add_argument("--workdir", default="/tmp/jaxmtl_bench_merge_cli")
  args = ap.parse_args(argv)
  work = pathlib.Path(args.workdir)
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(parents=True)
  paths = _write(work, args.params, args.tasks)
  base = [sys.executable, "-m", "jaxmtl.cli.merge", f"--config=configs/merge.py:{args.method}",
          f"--config.pretrained={paths[0]}",
          f"--config.finetuned={','.join(map(str, paths[1:]))}", "--config.progress=False"]
  cache = work / "xla"
  cases = {
    "streaming": ["--config.streaming=true", "--compilation_cache="],
    "in_memory_cold": ["--config.streaming=false", f"--compilation_cache={cache}"],
    "in_memory_warm": ["--config.streaming=false", f"--compilation_cache={cache}"],
  }
  rows = {name: [] for name in ["read", *cases]}
  for _ in range(args.reps):
    rows["read"].append((_timed([sys.executable, "-c", _READ, *map(str, paths)])[0], None))
    for name, extra in cases.items():
      if name == "in_memory_cold":
        shutil.rmtree(cache, ignore_errors=True)
      out = work / f"out_{name}.safetensors"
      dt, stdout = _timed(base + [f"--config.output={out}", *extra])
      report = json.loads((work / f"out_{name}.safetensors.report.json").read_text())
      rows[name].append((dt, {"cli_seconds": json.loads(stdout.strip().splitlines()[-1])["seconds"],
                              **report["timings"]}))
  outs = [work / f"out_{n}.safetensors" for n in cases]
  same = all(filecmp.cmp(outs[0], o, shallow=False) for o in outs[1:])
  read_gb = sum(p.stat().st_size for p in paths) / 1e9
  floor = [r[0] for r in rows["read"]]
  for name, rs in rows.items():
    wall = [r[0] for r in rs]
    line = {"case": name, "wall_s": round(statistics.median(wall), 3),
            "ratio_to_read": round(statistics.median(w / f for w, f in zip(wall, floor)), 2),
            "wall_min_max": [round(min(wall), 3), round(max(wall), 3)],
            "method": args.method, "params": args.params, "tasks": args.tasks,
            "files_GB": round(read_gb, 3), "reps": args.reps}
    if rs[0][1]:
      line["timings_median"] = {k: round(statistics.median(r[1][k] for r in rs), 3)
                                for k in rs[0][1]}
    else:
      line["outputs_identical"] = same
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
