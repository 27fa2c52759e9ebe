"""``ferry run -p NAME=VALUE`` reaches the notebook of the step that declares NAME (Papermill's
injected-parameters cell in the archived notebook), typed as a YAML scalar."""

from __future__ import annotations

import json

from ferry.cli import main
from ferry.services.seed import payment_events


def test_a_parameter_reaches_the_step_that_declares_it(make_stream, tmp_path, capsys):
    stream = make_stream(list(payment_events(600, 2)), partitions=2)
    config_file = stream.write_config(tmp_path / "s.yaml")
    argv = ["run", str(config_file), "--only", "00", "--audit", str(tmp_path / "audit")]
    status = main([*argv, "-p", "sample_per_partition=7", "-p", "headroom=0.5"])
    assert status == 0, capsys.readouterr()
    (notebook,) = (tmp_path / "audit").glob("*/*/00-*.ipynb")
    cells = json.loads(notebook.read_text())["cells"]
    (injected,) = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    source = "".join(injected["source"])
    assert "sample_per_partition = 7\n" in source and "headroom = 0.5\n" in source
