"""The command line, without tracing: arguments, early refusals, report formats."""

from __future__ import annotations

import pytest

from igdeadlock import cli, report
from igdeadlock.report.model import Report


def test_formats_are_the_report_renderers():
    assert set(cli.FORMATS) == set(report.FORMATS)


@pytest.mark.parametrize("fmt", cli.FORMATS)
def test_every_format_renders_an_empty_report(fmt):
    text = cli.render(Report([], {"edges_seen": 0}), fmt, show_suppressed=False)
    assert isinstance(text, str) and text


def test_a_missing_command_is_refused_before_anything_loads(capsys):
    assert cli.main(["trace", "--", "/no/such/program"]) == cli.EXIT_ERROR
    assert capsys.readouterr().err == "igdeadlock: cannot run /no/such/program: no such file or directory\n"


def test_no_command_says_how_to_give_one(capsys):
    assert cli.main(["trace"]) == cli.EXIT_ERROR
    assert "igdeadlock trace [OPTIONS] -- COMMAND" in capsys.readouterr().err


def test_kubernetes_options_need_k8s(capsys):
    assert cli.main(["watch", "--namespace", "shop", "--duration", "1"]) == cli.EXIT_ERROR
    assert "need --k8s" in capsys.readouterr().err


def test_arguments_after_the_double_dash_belong_to_the_command():
    args = cli.build_parser().parse_args(["trace", "--timeout", "5", "--", "prog", "--timeout", "1"])
    assert args.timeout == 5 and args.cmd == ["--", "prog", "--timeout", "1"]


def test_a_watch_of_one_container_traces_containers_only():
    args = cli.build_parser().parse_args(["watch", "--remote", "unix:///x.sock", "--container", "web"])
    (spec,) = cli.watch_targets(args, [])
    assert spec.params[cli.CONTAINER_NAME_PARAM] == "web"
    assert spec.params["operator.LocalManager.host"] == "false"
    assert spec.local


def test_a_bad_suppressions_file_is_refused_before_anything_starts(tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text("suppressions:\n  - function: f\n")
    assert cli.main(["trace", "--suppressions", str(rules), "--", "true"]) == cli.EXIT_ERROR
    assert capsys.readouterr().err == f"igdeadlock: {rules}: suppression 1: needs a reason\n"
    assert cli.main(["watch", "--baseline", str(tmp_path / "none.json")]) == cli.EXIT_ERROR
    assert "none.json" in capsys.readouterr().err


def test_a_watch_that_never_traced_anything_says_so_and_fails(tmp_path, capsys):
    """A report of nothing traced must not read as "no deadlock"."""
    out = tmp_path / "report.json"
    status = cli.main(["watch", "--remote", f"unix://{tmp_path}/absent/ig.socket", "--duration", "1",
                       "--status-interval", "60", "--format", "json", "-o", str(out)])
    assert status == cli.EXIT_ERROR
    assert "no target was ever traced" in capsys.readouterr().err
    import json
    notes = json.loads(out.read_text())["notes"]
    assert any("was never traced" in note and "absent/ig.socket" in note for note in notes), notes
