import subprocess
import sys

import pytest

from harness import cli
from merge.errors import WarpError


def test_warperror_becomes_one_line_and_exit_2(monkeypatch, capsys):
    def boom(args):
        raise WarpError("bad thing in file.yaml")

    real = cli.build_parser

    def parser_with_fake():
        p = real()
        sub = next(a for a in p._actions if a.dest == "command")
        sub.add_parser("fake").set_defaults(func=boom)
        return p

    monkeypatch.setattr(cli, "build_parser", parser_with_fake)
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err == "warp fake: error: bad thing in file.yaml\n"


def test_no_command_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2


def test_help_runs_as_a_module():
    r = subprocess.run([sys.executable, "-m", "harness.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: warp" in r.stdout


def test_every_documented_subcommand_is_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"merge", "run", "train-rm", "eval", "report", "leaderboard"} <= set(sub.choices)
