"""The demo behind ``triggers demo``: the questionnaire workflow, on SQLite and threads.

A respondent fills in a questionnaire of several pages. The application fires

- ``firstPageReceived`` (with the respondent's name and birthday),
- ``pageReceived`` once per page (with the page's answers and browser details),
- ``questionnaireComplete`` at the end,
- and ``isEmbeddedApplication`` when the questionnaire runs inside a partner's app,

in whatever order the requests happen to arrive. Three trigger tasks react:

- ``t_importSubject`` after ``firstPageReceived`` + ``questionnaireComplete``: creates the
  subject in the demo's "application database" and cascades ``{'subjectId': ...}``;
- ``t_importResponses`` after ``t_importSubject`` and *every* ``pageReceived``: imports one
  page of answers per firing;
- ``t_importBrowserMetadata`` after ``t_importSubject`` + ``pageReceived`` unless
  ``isEmbeddedApplication``: records the respondent's browser once.

Everything runs in this process: the session lives in a SQLite file
(:class:`~triggers.storages.sqlite.SqliteStorageBackend`) and the tasks run on
:class:`~triggers.runners.threading.ThreadingTaskRunner` threads. The "application
database" is a second SQLite file beside the session database; its path reaches the
tasks through the ``withParams`` directive.
"""

from __future__ import annotations

import json
import random
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console
from rich.table import Table

from triggers.manager import TriggerManager
from triggers.runners.base import task_runners
from triggers.runners.threading import ThreadingTaskRunner
from triggers.storages.sqlite import SqliteStorageBackend
from triggers.task import TaskContext, TriggerTask
from triggers.testing import name_matches_classpath
from triggers.types import TaskConfig, TaskInstance

__all__ = [
    "DemoResult",
    "DemoTriggerManager",
    "ImportBrowserMetadata",
    "ImportResponses",
    "ImportSubject",
    "NarratingThreadingRunner",
    "demo_configuration",
    "run_demo",
]

#: Respondents the demo picks from (by seed).
RESPONDENTS = [
    ("Ada Lovelace", "1815-12-10"),
    ("Alan Turing", "1912-06-23"),
    ("Grace Hopper", "1906-12-09"),
    ("Katherine Johnson", "1918-08-26"),
    ("Edsger Dijkstra", "1930-05-11"),
]
BROWSERS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
]
QUESTIONS_PER_PAGE = 3

APP_SCHEMA = """
CREATE TABLE IF NOT EXISTS subjects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    name TEXT NOT NULL,
    birthday TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS responses (
    subject_id INTEGER NOT NULL,
    page INTEGER NOT NULL,
    question TEXT NOT NULL,
    answer TEXT,
    PRIMARY KEY (subject_id, page, question)
);
CREATE TABLE IF NOT EXISTS browser_metadata (
    subject_id INTEGER PRIMARY KEY,
    user_agent TEXT NOT NULL,
    screen TEXT NOT NULL
);
"""


# ---------------------------------------------------------------------------
# The demo's "application database"
# ---------------------------------------------------------------------------
@contextmanager
def app_database(path: str) -> Iterator[sqlite3.Connection]:
    """A connection to the demo's application database; commits on success."""
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.executescript(APP_SCHEMA)
        with conn:
            yield conn


def read_app_database(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the demo's application tables (for the final report and tests)."""
    with app_database(path) as conn:
        return {
            "subjects": conn.execute(
                "SELECT id, session, name, birthday FROM subjects ORDER BY id"
            ).fetchall(),
            "responses": conn.execute(
                "SELECT subject_id, page, question, answer FROM responses "
                "ORDER BY subject_id, page, question"
            ).fetchall(),
            "browser_metadata": conn.execute(
                "SELECT subject_id, user_agent, screen FROM browser_metadata ORDER BY subject_id"
            ).fetchall(),
        }


# ---------------------------------------------------------------------------
# Narration: what fired, what was scheduled, what ran, what cascaded
# ---------------------------------------------------------------------------
class Narrator:
    """Prints demo events on a rich console (thread-safe: one line per event)."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self._lock = threading.Lock()

    def say(self, message: str, indent: int = 1) -> None:
        if self.console is None:
            return
        with self._lock:
            self.console.print("   " * indent + message, highlight=False, soft_wrap=True)


def short_json(value: Any, limit: int = 70) -> str:
    """Compact JSON, cut to ``limit`` characters."""
    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class NarratingThreadingRunner(ThreadingTaskRunner):
    """A :class:`ThreadingTaskRunner` that tells the demo's narrator what it schedules.

    It is a ThreadingTaskRunner in every other respect (same threads, same
    ``join_all()``); the narration happens before the thread starts, so the
    "scheduled" line always comes before the task's own lines.
    """

    def run(self, manager: TriggerManager, task_instance: TaskInstance) -> None:
        narrator = getattr(manager, "narrator", None)
        if narrator is not None:
            narrator.say(f"[cyan]⇢ scheduled[/] [bold]{task_instance.name}[/]", indent=2)
        super().run(manager, task_instance)


task_runners.register("demo-threading", NarratingThreadingRunner)


class DemoTriggerManager(TriggerManager):
    """The demo's manager: tasks run on (narrating) threads; no broker needed.

    ``narrator`` is set on a per-run subclass by :func:`run_demo`; task threads
    rebuild a manager of the same class, so they share it.
    """

    default_task_runner_name = "demo-threading"
    narrator: ClassVar[Narrator | None] = None


# ---------------------------------------------------------------------------
# The trigger tasks
# ---------------------------------------------------------------------------
class DemoTask(TriggerTask):
    """Base of the demo tasks: narrates the start and the end of ``_run``."""

    abstract = True

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        narrator = getattr(context.manager, "narrator", None)
        name = context.task_instance.name
        with context.get_logger_context() as logger:
            result, did = self.work(context, logger)
        if narrator is not None:
            narrator.say(f"[green]▶ ran[/] [bold]{name}[/] ({type(self).__name__}): {did}", 2)
            narrator.say(
                f"  [magenta]↳ cascade[/] [bold]{context.task_instance.config.name}[/] "
                f"{short_json(result)}",
                2,
            )
        return result

    def work(self, context: TaskContext, logger: Any) -> tuple[dict[str, Any], str]:
        """Do the task's job; return (cascade kwargs, what was done, for the narrator)."""
        raise NotImplementedError


@name_matches_classpath
class ImportSubject(DemoTask):
    """Creates the subject from the first page and cascades its id."""

    def work(self, context: TaskContext, logger: Any) -> tuple[dict[str, Any], str]:
        page = context.trigger_kwargs["firstPageReceived"]["responses"]
        pages = context.trigger_kwargs["questionnaireComplete"].get("pages")
        database = context.trigger_kwargs["demo"]["database"]
        with app_database(database) as conn:
            cursor = conn.execute(
                "INSERT INTO subjects (session, name, birthday) VALUES (?, ?, ?)",
                (context.manager.storage.uid, page["name"], page["birthday"]),
            )
            subject_id = cursor.lastrowid
        logger.info("created subject %s", subject_id, extra={"context": {"subjectId": subject_id}})
        did = f"created subject {subject_id} {page['name']!r} (questionnaire of {pages} pages)"
        return {"subjectId": subject_id, "name": page["name"]}, did


@name_matches_classpath
class ImportResponses(DemoTask):
    """Imports the answers of one page (one instance per ``pageReceived``)."""

    def work(self, context: TaskContext, logger: Any) -> tuple[dict[str, Any], str]:
        subject_id = context.trigger_kwargs["t_importSubject"]["subjectId"]
        received = context.trigger_kwargs["pageReceived"]
        page, answers = received["page"], received["responses"]
        database = context.trigger_kwargs["demo"]["database"]
        with app_database(database) as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO responses (subject_id, page, question, answer) "
                "VALUES (?, ?, ?, ?)",
                [
                    (subject_id, page, question, None if answer is None else str(answer))
                    for question, answer in sorted(answers.items())
                ],
            )
        unanswered = sorted(q for q, a in answers.items() if a is None)
        if unanswered:
            logger.warning(
                "page %s: unanswered questions %s",
                page,
                ", ".join(unanswered),
                extra={"context": {"page": page}},
            )
        did = f"imported {len(answers)} answers of page {page} for subject {subject_id}"
        if unanswered:
            did += f" ([yellow]warning[/]: {len(unanswered)} unanswered)"
        return {"subjectId": subject_id, "page": page, "imported": len(answers)}, did


@name_matches_classpath
class ImportBrowserMetadata(DemoTask):
    """Records the respondent's browser (not for embedded applications)."""

    def work(self, context: TaskContext, logger: Any) -> tuple[dict[str, Any], str]:
        subject_id = context.trigger_kwargs["t_importSubject"]["subjectId"]
        browser = context.trigger_kwargs["pageReceived"]["browser"]
        database = context.trigger_kwargs["demo"]["database"]
        with app_database(database) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO browser_metadata (subject_id, user_agent, screen) "
                "VALUES (?, ?, ?)",
                (subject_id, browser["userAgent"], browser["screen"]),
            )
        agent = browser["userAgent"].rsplit(" ", 1)[-1]
        return (
            {"subjectId": subject_id, "userAgent": browser["userAgent"]},
            f"recorded browser {agent} for subject {subject_id}",
        )


def demo_configuration(app_database_path: str) -> dict[str, dict[str, Any]]:
    """The demo's trigger task configuration (plain JSON-compatible data)."""
    params = {"demo": {"database": app_database_path}}
    return {
        "t_importSubject": {
            "after": ["firstPageReceived", "questionnaireComplete"],
            "run": ImportSubject.name,
            "withParams": params,
        },
        "t_importResponses": {
            "after": ["t_importSubject"],
            "andEvery": "pageReceived",
            "run": ImportResponses.name,
            "withParams": params,
        },
        "t_importBrowserMetadata": {
            "after": ["t_importSubject", "pageReceived"],
            "unless": ["isEmbeddedApplication"],
            "run": ImportBrowserMetadata.name,
            "withParams": params,
        },
    }


# ---------------------------------------------------------------------------
# Running the demo
# ---------------------------------------------------------------------------
@dataclass
class DemoResult:
    """What a demo run did and the final state of its session."""

    uid: str
    db_path: str
    app_db_path: str
    seed: int
    embedded: bool
    fired: list[tuple[str, dict[str, Any]]]
    tasks: dict[str, TaskConfig]
    instances: dict[str, TaskInstance]
    app_data: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every instance is resolved (nothing failed or stayed pending)."""
        return all(i.is_resolved for i in self.instances.values())


def application_triggers(
    rng: random.Random, pages: int, embedded: bool
) -> list[tuple[str, dict[str, Any]]]:
    """The triggers one questionnaire fires, in a shuffled (seeded) order.

    With ``embedded``, ``isEmbeddedApplication`` comes first.
    """
    name, birthday = rng.choice(RESPONDENTS)
    browser = {"userAgent": rng.choice(BROWSERS), "screen": rng.choice(["1280x800", "1920x1080"])}
    fired: list[tuple[str, dict[str, Any]]] = [
        ("firstPageReceived", {"responses": {"name": name, "birthday": birthday}}),
        ("questionnaireComplete", {"pages": pages}),
    ]
    for page in range(1, pages + 1):
        answers: dict[str, Any] = {
            f"p{page}q{q}": rng.choice([1, 2, 3, 4, 5, 5, 4, None])
            for q in range(1, QUESTIONS_PER_PAGE + 1)
        }
        fired.append(("pageReceived", {"page": page, "responses": answers, "browser": browser}))
    rng.shuffle(fired)
    if embedded:
        fired.insert(0, ("isEmbeddedApplication", {"partner": "acme-portal"}))
    return fired


def _pending_reason(instance: TaskInstance) -> str:
    missing = sorted(instance.config.after - set(instance.kwargs))
    return "waits for " + ", ".join(missing) if missing else "ready"


Snapshot = dict[str, tuple[str, frozenset[str], frozenset[str]]]


def _narrate_changes(
    narrator: Narrator, before: Snapshot, storage: SqliteStorageBackend
) -> Snapshot:
    """Say which instances were created, received a trigger but still wait, or were abandoned."""
    storage.invalidate_cache()
    now: Snapshot = {
        name: (i.status, frozenset(i.kwargs), frozenset(i.abandon_state))
        for name, i in storage.instances.items()
    }
    for name, instance in storage.instances.items():
        old = before.get(name)
        if old == now[name]:
            continue
        if instance.status == "unstarted":
            if old is None:
                narrator.say(f"[blue]+ created[/] [bold]{name}[/]: {_pending_reason(instance)}", 2)
            else:
                narrator.say(f"[blue]· updated[/] [bold]{name}[/]: {_pending_reason(instance)}", 2)
        elif instance.status == "abandoned":
            unless = ", ".join(sorted(instance.config.unless))
            verb = "created and abandoned" if old is None else "abandoned"
            narrator.say(f"[red]✗ {verb}[/] [bold]{name}[/] (unless {unless} fired)", 2)
    return now


def run_demo(
    seed: int | None = None,
    embedded: bool = False,
    pages: int = 3,
    db_path: str | None = None,
    uid: str | None = None,
    concurrent: bool = False,
    console: Console | None = None,
) -> DemoResult:
    """Run the questionnaire workflow once and return the final state.

    :param seed: seeds the respondent, the answers and the firing order (random if None).
    :param embedded: fire ``isEmbeddedApplication`` first (browser metadata is abandoned).
    :param pages: number of questionnaire pages (at least 1).
    :param db_path: the SQLite session database; a temporary directory (removed at
        the end) when None. The application database is written beside it.
    :param uid: the session uid (a fresh one when None).
    :param concurrent: fire all triggers at once from separate threads, like requests
        reaching different servers; otherwise each request is handled (tasks included)
        before the next one arrives, which reads better.
    :param console: where to narrate (nothing is printed when None).
    """
    if pages < 1:
        raise ValueError(f"pages must be at least 1, got {pages}")
    if seed is None:
        seed = random.SystemRandom().randrange(10_000)
    rng = random.Random(seed)
    uid = uid or f"questionnaire-{seed}-{uuid.uuid4().hex[:8]}"
    tmpdir = None
    if db_path is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="triggers-demo-")
        db_path = str(Path(tmpdir.name) / "triggers.sqlite3")
    db = Path(db_path).absolute()
    app_db = str(db.with_name(db.stem + "-app.sqlite3"))
    narrator = Narrator(console)
    manager_class = type("DemoTriggerManager", (DemoTriggerManager,), {"narrator": narrator})

    try:
        storage = SqliteStorageBackend(uid, path=str(db))
        manager = manager_class(storage)
        manager.update_configuration(demo_configuration(app_db))
        fired = application_triggers(rng, pages, embedded)

        if console is not None:
            console.rule(f"[bold]Triggers demo[/] — session [cyan]{uid}[/]")
            console.print(
                f"seed {seed}, {pages} page(s), {'embedded' if embedded else 'not embedded'}; "
                f"session in SQLite file {db}; tasks on threads (no broker, no server)",
                highlight=False,
            )
            console.print(configuration_summary(storage.tasks))

        statuses: Snapshot = {}
        if concurrent:
            narrator.say("[bold]All requests arrive at once[/] (one thread each)", 0)
            barrier = threading.Barrier(len(fired))
            errors: list[BaseException] = []

            def request(trigger: str, kwargs: dict[str, Any]) -> None:
                try:
                    barrier.wait(timeout=30)
                    narrator.say(f"[bold yellow]fire[/] [bold]{trigger}[/] {short_json(kwargs)}", 1)
                    manager_class(SqliteStorageBackend(uid, path=str(db))).fire(trigger, kwargs)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [
                threading.Thread(target=request, args=item, name=f"request:{item[0]}")
                for item in fired
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            ThreadingTaskRunner.join_all()
            if errors:
                raise errors[0]
            statuses = _narrate_changes(narrator, statuses, storage)
        else:
            for number, (trigger, kwargs) in enumerate(fired, 1):
                narrator.say(
                    f"[bold yellow]{number:>2}. fire[/] [bold]{trigger}[/] {short_json(kwargs)}", 0
                )
                manager.fire(trigger, kwargs)
                ThreadingTaskRunner.join_all()
                statuses = _narrate_changes(narrator, statuses, storage)
        ThreadingTaskRunner.join_all()

        storage.invalidate_cache()
        result = DemoResult(
            uid=uid,
            db_path=str(db),
            app_db_path=app_db,
            seed=seed,
            embedded=embedded,
            fired=fired,
            tasks=storage.tasks,
            instances=storage.instances,
            app_data=read_app_database(app_db),
        )
        if console is not None:
            print_final_state(console, result, kept=tmpdir is None)
        return result
    finally:
        ThreadingTaskRunner.join_all()
        if tmpdir is not None:
            _cleanup(tmpdir)


def _cleanup(tmpdir: tempfile.TemporaryDirectory[str]) -> None:
    # SQLite connections are cached per thread; the files can go regardless on POSIX.
    for _ in range(3):
        try:
            tmpdir.cleanup()
            return
        except OSError:  # pragma: no cover - e.g. a file still open on Windows
            time.sleep(0.1)


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------
def configuration_summary(tasks: Mapping[str, TaskConfig]) -> Table:
    from triggers.cli.render import tasks_table

    return tasks_table(tasks, {}, title="Configuration", show_counts=False)


def print_final_state(console: Console, result: DemoResult, kept: bool) -> None:
    from triggers.cli.render import instances_table, tasks_table

    console.print()
    console.print(tasks_table(result.tasks, result.instances, title="Trigger tasks"))
    console.print(instances_table(result.instances.values(), title="Task instances"))

    data = result.app_data
    app = Table(title="Application database", title_justify="left")
    app.add_column("table")
    app.add_column("rows", justify="right")
    app.add_column("content")
    subjects = ", ".join(f"#{r[0]} {r[2]} ({r[3]})" for r in data.get("subjects", []))
    app.add_row("subjects", str(len(data.get("subjects", []))), subjects)
    pages = sorted({r[1] for r in data.get("responses", [])})
    app.add_row(
        "responses",
        str(len(data.get("responses", []))),
        "pages " + ", ".join(map(str, pages)) if pages else "",
    )
    agents = ", ".join(r[1].rsplit(" ", 1)[-1] for r in data.get("browser_metadata", []))
    app.add_row("browser_metadata", str(len(data.get("browser_metadata", []))), agents)
    console.print(app)

    if result.ok:
        console.print("[bold green]Every task instance is resolved.[/]")
    else:
        pending = [n for n, i in result.instances.items() if not i.is_resolved]
        console.print(f"[bold red]Unresolved instances:[/] {', '.join(pending)}")
    if kept:
        console.print(
            f"Inspect it again: [bold]triggers inspect --option path={result.db_path} "
            f"--uid {result.uid}[/]",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            "[dim]The session lived in a temporary directory (now removed); "
            "run with --db FILE to keep it and explore it with `triggers inspect`.[/]"
        )
