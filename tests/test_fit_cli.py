"""jaxmtl-fit command line: outputs and clear errors on malformed input."""
import json

import numpy as np
import pytest

from jaxmtl.cli import fit as cli
from jaxmtl.scaling import laws


def _write(path, header, rows):
  path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows))
  return str(path)


def test_power_law_cli_writes_json_and_png(tmp_path, capsys):
  x = np.geomspace(1e16, 1e20, 8)
  data = _write(tmp_path / "d.csv", ["x", "y"], zip(x, laws.power_law(x, 2e-3, -0.5)))
  rc = cli.main(["--data", data, "--form", "power_law", "--out", str(tmp_path / "o"),
                 "--bootstrap", "3", "--seed", "1"])
  assert rc == 0
  out = json.loads((tmp_path / "o" / "fit_power_law.json").read_text())
  assert out["params"]["a"] == pytest.approx(0.5) and out["n_bootstrap"] == 3
  assert (tmp_path / "o" / "fit_power_law.png").stat().st_size > 0
  assert "+-" in capsys.readouterr().out


def test_chinchilla_cli_with_c_column(tmp_path):
  rng = np.random.default_rng(0)
  n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 60))
  d = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 60))
  loss = laws.chinchilla(n, d, 400.0, 1500.0, 1.7, 0.34, 0.30)
  data = _write(tmp_path / "c.csv", ["N", "C", "loss"], zip(n, 6 * n * d, loss))
  assert cli.main(["--data", data, "--form", "chinchilla", "--out", str(tmp_path),
                   "--grid-stride", "150"]) == 0
  out = json.loads((tmp_path / "fit_chinchilla.json").read_text())
  assert out["params"]["alpha"] == pytest.approx(0.34, rel=1e-2)


@pytest.mark.parametrize("header,rows,form,msg", [
    (["N", "loss"], [(1, 2)] * 8, "kaplan", "missing \\['D'\\]"),
    (["N", "D", "loss"], [(1e8, 1e9, 2.0)] * 7 + [(1e8, -3, 2.0)], "kaplan",
     "row 9, column 'D'"),
    (["N", "D", "loss"], [(1e8, 1e9, "abc")] * 8, "kaplan", "not a number"),
    (["N", "D", "loss"], [(1e8, 1e9, 2.0)] * 3, "kaplan", "at least 5 rows"),
    (["x"], [(1,)] * 3, "power_law", "needs columns \\['x', 'y'\\]"),
])
def test_cli_errors(tmp_path, capsys, header, rows, form, msg):
  data = _write(tmp_path / "bad.csv", header, rows)
  assert cli.main(["--data", data, "--form", form, "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error:") and "Traceback" not in err
  import re
  assert re.search(msg, err), err


def test_cli_missing_file(tmp_path, capsys):
  assert cli.main(["--data", str(tmp_path / "nope.csv"), "--form", "isoflop"]) == 2
  assert "no such file" in capsys.readouterr().err
