"""The demo (``triggers demo``): the questionnaire workflow on SQLite and threads."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner
from rich.console import Console

from triggers.cli import cli
from triggers.demo import run_demo


def _statuses(result):
    return {name: i.status for name, i in result.instances.items()}


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_demo_not_embedded_runs_everything_once_per_page(seed, tmp_path):
    result = run_demo(seed=seed, pages=3, db_path=str(tmp_path / "demo.sqlite3"))

    assert result.ok
    statuses = _statuses(result)
    assert statuses == {
        "t_importSubject#0": "finished",
        "t_importResponses#0": "finished",
        "t_importResponses#1": "finished",
        "t_importResponses#2": "finished",
        "t_importBrowserMetadata#0": "finished",
    }
    subject = result.instances["t_importSubject#0"]
    subject_id = subject.metadata["result"]["subjectId"]
    # Every page imported exactly once, each by its own instance, for the same subject.
    pages = sorted(
        result.instances[f"t_importResponses#{n}"].metadata["result"]["page"] for n in range(3)
    )
    assert pages == [1, 2, 3]
    for n in range(3):
        instance = result.instances[f"t_importResponses#{n}"]
        assert instance.kwargs["t_importSubject"]["subjectId"] == subject_id
        assert instance.metadata["result"]["subjectId"] == subject_id
    # The visible work: one subject, 3 answers per page, the browser once.
    assert [row[0] for row in result.app_data["subjects"]] == [subject_id]
    assert len(result.app_data["responses"]) == 9
    assert sorted({row[1] for row in result.app_data["responses"]}) == [1, 2, 3]
    assert len(result.app_data["browser_metadata"]) == 1
    # The order the application fired in is the seeded shuffle, without the embedded flag.
    assert sorted(t for t, _ in result.fired) == sorted(
        ["firstPageReceived", "questionnaireComplete"] + ["pageReceived"] * 3
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_demo_embedded_abandons_browser_metadata(seed, tmp_path):
    result = run_demo(seed=seed, pages=2, embedded=True, db_path=str(tmp_path / "d.sqlite3"))

    assert result.fired[0][0] == "isEmbeddedApplication"
    statuses = _statuses(result)
    assert statuses["t_importBrowserMetadata#0"] == "abandoned"
    assert statuses["t_importSubject#0"] == "finished"
    assert [statuses[f"t_importResponses#{n}"] for n in range(2)] == ["finished", "finished"]
    assert "t_importResponses#2" not in statuses
    assert result.app_data["browser_metadata"] == []
    assert result.ok  # abandoned counts as resolved


def test_demo_is_reproducible_with_a_seed(tmp_path):
    first = run_demo(seed=11, pages=4, db_path=str(tmp_path / "a.sqlite3"))
    second = run_demo(seed=11, pages=4, db_path=str(tmp_path / "b.sqlite3"))
    assert first.fired == second.fired
    assert _statuses(first) == _statuses(second)
    results = {n: i.metadata.get("result") for n, i in first.instances.items()}
    assert results == {n: i.metadata.get("result") for n, i in second.instances.items()}


def test_demo_concurrent_requests_reach_the_same_final_state(tmp_path):
    result = run_demo(seed=5, pages=4, concurrent=True, db_path=str(tmp_path / "c.sqlite3"))
    statuses = _statuses(result)
    assert statuses.pop("t_importSubject#0") == "finished"
    assert statuses.pop("t_importBrowserMetadata#0") == "finished"
    assert statuses == {f"t_importResponses#{n}": "finished" for n in range(4)}
    assert len(result.app_data["subjects"]) == 1
    assert len(result.app_data["responses"]) == 12


def test_demo_narrates_and_prints_the_final_tables(tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=160, color_system=None)
    result = run_demo(seed=2, pages=2, console=console, db_path=str(tmp_path / "n.sqlite3"))
    text = out.getvalue()
    assert result.ok
    for expected in (
        "fire firstPageReceived",
        "fire questionnaireComplete",
        "scheduled t_importSubject#0",
        "ran t_importSubject#0",
        "cascade t_importSubject",
        "Task instances",
        "t_importResponses#1",
        "Application database",
        "Every task instance is resolved.",
        f"--uid {result.uid}",
    ):
        assert expected in text, expected


def test_demo_command_runs_and_removes_its_temporary_files():
    runner = CliRunner()
    outcome = runner.invoke(cli, ["demo", "--seed", "4", "--pages", "2"])
    assert outcome.exit_code == 0, outcome.output
    assert "Every task instance is resolved." in outcome.output
    assert "temporary directory" in outcome.output


def test_demo_session_can_be_inspected_afterwards(tmp_path):
    db = tmp_path / "kept.sqlite3"
    runner = CliRunner()
    outcome = runner.invoke(
        cli, ["demo", "--seed", "8", "--embedded", "--db", str(db), "--uid", "kept-session"]
    )
    assert outcome.exit_code == 0, outcome.output
    inspected = runner.invoke(
        cli, ["inspect", "--option", f"path={db}", "--uid", "kept-session"]
    )
    assert inspected.exit_code == 0, inspected.output
    assert "t_importBrowserMetadata#0" in inspected.output
    assert "abandoned" in inspected.output


def test_demo_rejects_zero_pages():
    outcome = CliRunner().invoke(cli, ["demo", "--pages", "0"])
    assert outcome.exit_code == 2
    assert "--pages" in outcome.output
