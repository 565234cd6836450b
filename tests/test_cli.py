"""The ``triggers`` command line, through click's CliRunner on a SQLite file."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from triggers.cli import cli
from triggers.runners.threading import ThreadingTaskRunner
from triggers.storages.sqlite import SqliteStorageBackend

CONFIG = {
    "t_a": {"after": ["x", "y"], "run": "triggers.testing.PassThruTask"},
    "t_b": {"after": ["t_a"], "run": "triggers.testing.FailingTask"},
    "t_c": {
        "after": ["t_b"],
        "andEvery": "z",
        "unless": ["stop"],
        "run": "triggers.testing.DevNullTask",
    },
}


@pytest.fixture
def run():
    runner = CliRunner(env={"COLUMNS": "200"})

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    yield invoke
    ThreadingTaskRunner.join_all(timeout=30)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    return str(path)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "cli.sqlite3")


def session(db, uid="s1"):
    storage = SqliteStorageBackend(uid, path=db)
    storage.invalidate_cache()
    return storage


def opts(db, uid="s1"):
    return ["--option", f"path={db}", "--uid", uid]


# --- validate / graph ------------------------------------------------------------
def test_validate_good_file(run, config_file):
    result = run("validate", config_file)
    assert "is valid: 3 trigger task(s)" in result.output
    assert "triggers.testing.PassThruTask" in result.output


def test_validate_yaml_file(run, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("t_a:\n  after: [x]\n  run: triggers.testing.DevNullTask\n")
    assert "is valid: 1 trigger task(s)" in run("validate", str(path)).output


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"t_a": {"after": "x", "run": "r"}}, "task 't_a', directive 'after'"),
        ({"t_a": {"after": ["x"]}}, "task 't_a', directive 'run': missing"),
        (
            {"t_a": {"after": ["x"], "run": "r", "withParams": {"x": 1}}},
            "directive 'withParams'",
        ),
        ({"t_a": {"after": ["x"], "run": "r", "andEvery": ["y"]}}, "directive 'andEvery'"),
        ({"t_a": {"after": ["x"], "run": "r", "using": "nope"}}, "unknown runner key 'nope'"),
        (["not", "a", "mapping"], "expected a mapping of task names"),
    ],
)
def test_validate_bad_file_exits_1_with_the_message(run, tmp_path, config, expected):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    result = run("validate", str(path), code=1)
    assert expected in result.output
    assert "Traceback" not in result.output


def test_validate_invalid_json(run, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{nope")
    assert "not valid JSON" in run("validate", str(path), code=1).output


def test_validate_missing_file_is_a_usage_error(run, tmp_path):
    assert "does not exist" in run("validate", str(tmp_path / "missing.json"), code=2).output


def test_validate_check_tasks_finds_unknown_run(run, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"t_a": {"after": ["x"], "run": "no.such.Task"}}))
    run("validate", str(path))  # structure is fine
    result = run("validate", "--check-tasks", str(path), code=1)
    assert "run='no.such.Task' names no registered TriggerTask" in result.output


def test_graph_mermaid_has_every_kind_of_edge(run, config_file):
    out = run("graph", config_file).output
    assert out.startswith("flowchart LR")
    ids = {}
    for line in out.splitlines():
        line = line.strip()
        for marker in ('(["', '["'):
            if marker in line and "-->" not in line:
                node_id, _, rest = line.partition(marker)
                ids[rest.split('"')[0].split("<br/>")[0]] = node_id
                break
    assert f"{ids['x']} -->|after| {ids['t_a']}" in out
    assert f"{ids['y']} -->|after| {ids['t_a']}" in out
    assert f"{ids['t_a']} -->|cascade| {ids['t_b']}" in out
    assert f"{ids['z']} ==>|andEvery| {ids['t_c']}" in out
    assert f"{ids['stop']} -.->|unless| {ids['t_c']}" in out
    assert ":::trigger" in out and ":::task" in out


def test_graph_dot_has_every_kind_of_edge(run, config_file):
    out = run("graph", config_file, "--format", "dot").output
    assert out.startswith("digraph triggers {")
    assert '"x" -> "t_a" [label="after"]' in out
    assert '"t_a" -> "t_b" [label="cascade"' in out
    assert '"z" -> "t_c" [label="andEvery", style=bold' in out
    assert '"stop" -> "t_c" [label="unless", style=dashed' in out
    assert '"t_a" [shape=box' in out and '"x" [shape=ellipse' in out


def test_graph_escapes_odd_names(run, tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"t_q": {"after": ['say "hi"'], "run": "a.B"}}))
    assert '"say \\"hi\\"" -> "t_q"' in run("graph", str(path), "--format", "dot").output
    assert "say #quot;hi#quot;" in run("graph", str(path)).output


def test_graph_rejects_invalid_configuration(run, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"t_a": {"after": ["x"]}}))
    assert "directive 'run'" in run("graph", str(path), code=1).output


# --- session commands --------------------------------------------------------------
def test_configure_fire_and_inspect(run, config_file, db):
    assert "Configured 3 trigger task(s) in session s1" in run(
        "configure", config_file, *opts(db)
    ).output
    result = run("fire", "x", "--kwargs", '{"a": 1}', *opts(db), "--runner", "threading")
    assert "scheduled nothing" in result.output
    result = run("fire", "y", "--kwargs", '{"b": 2}', *opts(db), "--runner", "threading")
    assert "scheduled t_a#0" in result.output
    # The cascade ran too: t_b failed (FailingTask).
    assert "t_b#0" in result.output and "failed" in result.output

    storage = session(db)
    assert storage["t_a#0"].status == "finished"
    assert storage["t_a#0"].metadata["result"] == {"kwargs": {"x": {"a": 1}, "y": {"b": 2}}}
    assert storage["t_b#0"].status == "failed"

    out = run("inspect", *opts(db)).output
    assert "Session s1: task instances" in out
    assert "t_a#0" in out and "finished" in out and "failed" in out
    assert "1 unresolved" in out and "1 with unresolved error logs" in out

    data = json.loads(run("inspect", *opts(db), "--json").output)
    assert data["uid"] == "s1"
    assert data["instances"]["t_b#0"]["status"] == "failed"
    assert set(data["tasks"]) == {"t_a", "t_b", "t_c"}

    detail = run("inspect", *opts(db), "--instance", "t_b#0").output
    assert "RuntimeError" in detail and "exceptionInfo" in detail
    single = json.loads(run("inspect", *opts(db), "--instance", "t_b#0", "--json").output)
    assert single["metadata"]["exceptionType"] == "builtins.RuntimeError"


def prepare_failed(run, config_file, db):
    run("configure", config_file, *opts(db))
    run("fire", "x", *opts(db), "--runner", "threading")
    run("fire", "y", *opts(db), "--runner", "threading")
    assert session(db)["t_b#0"].status == "failed"


def test_replay_failed_instance(run, config_file, db):
    prepare_failed(run, config_file, db)
    result = run("replay", "t_b#0", *opts(db), "--runner", "threading")
    assert "its clone is t_b#1" in result.output
    storage = session(db)
    assert storage["t_b#0"].status == "replayed"
    assert storage["t_b#1"].status == "failed"  # FailingTask fails again
    assert storage["t_b#1"].parent == "t_b#0"


def test_replay_with_replacement_kwargs(run, config_file, db):
    prepare_failed(run, config_file, db)
    run("replay", "t_b#0", "--kwargs", '{"t_a": {"fixed": true}}', *opts(db), "--runner",
        "threading")
    assert session(db)["t_b#1"].kwargs == {"t_a": {"fixed": True}}


def test_replay_errors(run, config_file, db):
    prepare_failed(run, config_file, db)
    result = run("replay", "t_a#0", *opts(db), code=1)
    assert "cannot replay task instance 't_a#0'" in result.output
    assert "'finished'" in result.output
    result = run("replay", "t_a#7", *opts(db), code=1)
    assert "t_a#7" in result.output
    assert "Traceback" not in result.output
    result = run("replay", "t_b#0", "--kwargs", "[1, 2]", *opts(db), code=2)
    assert "expected a JSON object" in result.output
    assert session(db)["t_b#0"].status == "failed"  # nothing changed


def test_skip_with_cascade_and_result(run, config_file, db):
    prepare_failed(run, config_file, db)
    result = run(
        "skip", "t_b#0", "--cascade", "--result", '{"ok": true}', *opts(db), "--runner",
        "threading",
    )
    assert "Skipped t_b#0 in session s1 and cascaded." in result.output
    storage = session(db)
    assert storage["t_b#0"].status == "skipped"
    # The cascade reached t_c, which still waits for z.
    assert storage["t_c#0"].status == "unstarted"
    assert storage["t_c#0"].kwargs == {"t_b": {"ok": True}}


def test_skip_without_cascade(run, config_file, db):
    prepare_failed(run, config_file, db)
    run("skip", "t_b#0", *opts(db))
    storage = session(db)
    assert storage["t_b#0"].status == "skipped"
    assert "t_c#0" not in storage


def test_skip_errors(run, config_file, db):
    prepare_failed(run, config_file, db)
    assert "needs --cascade" in run("skip", "t_b#0", "--result", "{}", *opts(db), code=2).output
    result = run("skip", "t_a#0", *opts(db), code=1)
    assert "cannot skip task instance 't_a#0'" in result.output


def test_recover_stuck_scheduled_instance(run, config_file, db):
    run("configure", config_file, *opts(db))
    storage = session(db)
    # Simulate a crash between commit and dispatch: t_a#0 scheduled, never dispatched.
    with storage.acquire_lock():
        storage.create_instance(
            "t_a", kwargs={"x": {}, "y": {}}, status="scheduled"
        )
        storage.save()
    assert "nothing" in run("recover", *opts(db), "--older-than", "1h").output
    result = run("recover", *opts(db), "--runner", "threading")
    assert "Recovered in session s1: t_a#0." in result.output
    storage = session(db)
    assert storage["t_a#0"].status == "finished"
    assert storage["t_b#0"].status == "failed"


def test_recover_rejects_bad_duration(run, db):
    assert "expected seconds" in run("recover", *opts(db), "--older-than", "soon", code=2).output


def test_sessions_and_purge(run, config_file, db):
    run("configure", config_file, *opts(db, "first"))
    run("configure", config_file, *opts(db, "second"))
    assert run("sessions", "--option", f"path={db}").output.split() == ["first", "second"]
    assert "Purged 0 session(s)" in run(
        "purge", "--older-than", "1d", "--option", f"path={db}"
    ).output
    time.sleep(0.05)
    assert "Purged 2 session(s)" in run(
        "purge", "--older-than", "0.01", "--option", f"path={db}"
    ).output
    assert run("sessions", "--option", f"path={db}").output.split() == []


def test_purge_needs_older_than(run, db):
    assert "--older-than" in run("purge", "--option", f"path={db}", code=2).output


# --- user errors --------------------------------------------------------------------
def test_fire_user_errors_exit_nonzero_without_traceback(run, config_file, db):
    run("configure", config_file, *opts(db))
    cases = [
        (["fire", "x", "--kwargs", "{nope", *opts(db)], 2, "not valid JSON"),
        (["fire", "x", "--kwargs", "3", *opts(db)], 2, "expected a JSON object"),
        (["fire", "x", "--storage", "nosuch", "--uid", "s1"], 1, "no storage backend"),
        (["fire", "x", *opts(db), "--option", "colour=blue"], 1, "unexpected keyword"),
        (["fire", "x", *opts(db), "--option", "oops"], 2, "expected KEY=VALUE"),
        (["fire", "x", *opts(db), "--manager", "pirate"], 1, "no trigger manager"),
        (["fire", "x", *opts(db), "--import", "no_such_module_xyz"], 1, "cannot import"),
        (["fire", "x", "--option", f"path={db}"], 2, "--uid"),
    ]
    for args, code, message in cases:
        result = run(*args, code=code)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert session(db).latest_kwargs == {}  # nothing was stored


def test_fire_without_threading_uses_the_configured_runner(run, config_file, db):
    # The default runner is Celery; the sample tasks are not registered on a Celery
    # app, so dispatching is refused before anything is stored.
    run("configure", config_file, *opts(db))
    run("fire", "x", *opts(db))
    result = run("fire", "y", *opts(db), code=1)
    assert "t_a" in result.output and "Celery" in result.output
    storage = session(db)
    assert "t_a#0" in storage and storage["t_a#0"].status == "unstarted"


def test_inspect_unknown_session(run, config_file, db):
    run("configure", config_file, *opts(db))
    result = run("inspect", *opts(db, "nope"), code=1)
    assert "no session 'nope'" in result.output
    assert "no task instance named 't_x#0'" in run(
        "inspect", *opts(db), "--instance", "t_x#0", code=1
    ).output


def test_configure_rejects_invalid_file_and_stores_nothing(run, tmp_path, db):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"t_a": {"after": ["x"], "run": "r", "unless": "stop"}}))
    result = run("configure", str(path), *opts(db), code=1)
    assert "directive 'unless'" in result.output
    assert session(db).tasks == {}


def test_memory_storage_works_in_process(run, config_file):
    run("configure", config_file, "--storage", "memory", "--uid", "cli-memory")
    run("fire", "x", "--storage", "memory", "--uid", "cli-memory", "--runner", "threading")
    out = run("inspect", "--storage", "memory", "--uid", "cli-memory").output
    assert "t_a#0" in out and "waiting for y" in out


def test_help_lists_the_commands(run):
    out = run("--help").output
    for command in (
        "demo", "validate", "graph", "inspect", "fire", "replay", "skip", "recover",
        "configure", "sessions", "purge",
    ):
        assert command in out


def test_graph_of_the_demo_matches_the_docs(run, tmp_path):
    from pathlib import Path

    from triggers.demo import demo_configuration

    path = tmp_path / "demo.json"
    path.write_text(json.dumps(demo_configuration(str(tmp_path / "app.sqlite3"))))
    out = run("graph", str(path)).output
    docs = (Path(__file__).parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    block = docs.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert out == block
