"""`nasir search` and `nasir train` read the spec file once, whichever path (CNN or language model,
nasir/rnn/hooks.py) takes it: the CLI loads it and hands the loaded spec on (nasir/cli.py cmd_search,
cmd_train). Each run stops at a bad --data, which both paths check after reading the spec; the
message says which path ran."""

from __future__ import annotations

import pytest
from helpers import EXAMPLES

import nasir.api
from nasir.cli import main

CNN = "data specs: digits, synthetic[:N], cifar10:PATH, folder:PATH"
LM = "unknown language-model data 'bogus:x'"


@pytest.mark.parametrize("command,spec,message", [
    ("search", "digits.cell", CNN),
    ("search", "ptb.cell", LM),
    ("train", "darts_v2.cell", CNN),
    ("train", "darts_v2_rnn.cell", LM),
])  # fmt: skip
def test_the_spec_is_read_once(command, spec, message, tmp_path, capsys, monkeypatch):
    reads = []
    read = nasir.api.read_source  # every load of a path reads the file through it (nasir/api.py)
    monkeypatch.setattr(nasir.api, "read_source", lambda p: (reads.append(str(p)), read(p))[1])
    code = main([command, str(EXAMPLES / spec), "--data", "bogus:x", "--out", str(tmp_path / "run")])
    assert code == 2 and message in capsys.readouterr().err
    assert reads == [str(EXAMPLES / spec)]

