"""The ``triggers`` command line: demo, validate, graph, and session commands.

Every command reports user errors (bad configuration, unknown instance, wrong
status, unreachable storage, ...) as one ``Error: ...`` line on stderr with a
non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console

from triggers.exceptions import TriggersError
from triggers.types import TaskInstance

__all__ = ["main", "cli"]

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def console() -> Console:
    """The console commands print to (``sys.stdout`` at the time of printing).

    Output to a file or a pipe gets 120 columns (rich would assume 80) unless
    ``COLUMNS`` says otherwise; a terminal gets its own width.
    """
    out = Console(soft_wrap=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(soft_wrap=False, width=120)
    return out


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def user_errors(func: F) -> F:
    """Turn the library's user-facing errors into ``Error: ...`` + exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except (TriggersError, KeyError, ValueError, LookupError, OSError) as exc:
            raise click.ClickException(_message(exc)) from None

    return wrapper  # type: ignore[return-value]


def parse_json_object(value: str | None, option: str) -> dict[str, Any] | None:
    """Parse a JSON object given on the command line (None stays None)."""
    if value is None:
        return None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not valid JSON ({exc.msg} at column {exc.colno})", param_hint=option
        )
    if not isinstance(data, dict):
        raise click.BadParameter(
            f"expected a JSON object like '{{\"key\": 1}}', got {type(data).__name__}",
            param_hint=option,
        )
    return data


def parse_option_value(text: str) -> Any:
    """Numbers, true/false and null are passed as such; anything else as a string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def parse_options(items: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f"expected KEY=VALUE (e.g. path=triggers.sqlite3), got {item!r}",
                param_hint="--option",
            )
        options[key.strip()] = parse_option_value(value)
    return options


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    """Seconds, or a number with a unit: ``90``, ``90s``, ``15m``, ``12h``, ``7d``."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        match = _DURATION.match(str(value))
        if not match:
            self.fail(f"expected seconds or a number with s/m/h/d (e.g. 15m), got {value!r}")
        return float(match.group(1)) * _UNITS[match.group(2)]


def import_modules(modules: tuple[str, ...]) -> None:
    """Import the modules that register tasks, managers, storages or runners."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`, let --import find the current project
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise click.ClickException(f"--import {module}: cannot import it ({exc})") from None


def storage_class(key: str) -> type:
    from triggers.storages import storage_backends

    try:
        return storage_backends.get_class(key)
    except KeyError as exc:
        raise click.ClickException(f"--storage: {_message(exc)}") from None
    except ImportError as exc:
        raise click.ClickException(
            f"--storage {key}: its module cannot be imported ({exc}); is its extra installed?"
        ) from None


def _describe(key: str, options: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in options.items() if "password" not in k.lower())
    return f"{key} storage" + (f" ({shown})" if shown else "")


def session_exists(key: str, uid: str, options: Mapping[str, Any]) -> bool | None:
    """Whether the storage knows the session (None when it cannot list sessions)."""
    cls = storage_class(key)
    try:
        return uid in cls.list_sessions(**options)  # type: ignore[attr-defined]
    except NotImplementedError:
        return None
    except TypeError as exc:
        raise click.ClickException(f"--option: {_describe(key, options)} rejects them: {exc}")


def build_manager(
    storage: str,
    options: tuple[str, ...],
    uid: str,
    manager: str = "default",
    imports: tuple[str, ...] = (),
    must_exist: bool = False,
) -> Any:
    """Build the manager a session command works with."""
    from triggers.manager import trigger_managers

    import_modules(imports)
    parsed = parse_options(options)
    cls = storage_class(storage)
    if must_exist and session_exists(storage, uid, parsed) is False:
        raise click.ClickException(
            f"no session {uid!r} in the {_describe(storage, parsed)}; "
            "`triggers sessions` lists the sessions it has"
        )
    try:
        backend = cls(uid, **parsed)
    except TypeError as exc:
        raise click.ClickException(f"--option: the {storage} storage rejects them: {exc}") from None
    try:
        return trigger_managers.get(manager, backend)
    except KeyError as exc:
        raise click.ClickException(f"--manager: {_message(exc)}") from None


def session_options(func: F) -> F:
    """--storage, --option, --uid, --manager and --import."""
    func = click.option(
        "-i",
        "--import",
        "imports",
        multiple=True,
        metavar="MODULE",
        help="Import MODULE first (it registers tasks, managers or storages). Repeatable.",
    )(func)
    func = click.option(
        "--manager",
        default="default",
        show_default=True,
        help="Registry key of the trigger manager class.",
    )(func)
    func = click.option("--uid", required=True, help="The session uid.")(func)
    return storage_options(func)


def storage_options(func: F) -> F:
    func = click.option(
        "-o",
        "--option",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Storage option, e.g. path=triggers.sqlite3 or url=redis://... Repeatable.",
    )(func)
    func = click.option(
        "--storage",
        default="sqlite",
        show_default=True,
        help="Registry key of the storage backend (sqlite, memory, redis, postgres, ...).",
    )(func)
    return func


def runner_option(func: F) -> F:
    return click.option(
        "--runner",
        type=click.Choice(["config", "threading"]),
        default="config",
        show_default=True,
        help="config: tasks go to the runner the configuration says (Celery by default). "
        "threading: run them in this process on threads and wait for them (cascades too).",
    )(func)


@contextmanager
def dispatching(runner: str) -> Iterator[None]:
    """With ``threading``, tasks run on threads of this process; waits for all of them."""
    if runner != "threading":
        yield
        return
    from triggers.runners.threading import ThreadingTaskRunner
    from triggers.testing import threading_runner

    with threading_runner():
        try:
            yield
        finally:
            ThreadingTaskRunner.join_all()


def snapshot(manager: Any) -> dict[str, str]:
    manager.storage.invalidate_cache()
    return {name: i.status for name, i in manager.storage.instances.items()}


def print_changes(manager: Any, before: Mapping[str, str]) -> None:
    """Print the instances that are new or changed status since ``before``."""
    from triggers.cli.render import instances_table

    manager.storage.invalidate_cache()
    changed = [
        i for name, i in manager.storage.instances.items() if before.get(name) != i.status
    ]
    if changed:
        console().print(instances_table(changed, title="Changed task instances"))


def _names(instances: list[TaskInstance]) -> str:
    return ", ".join(i.name for i in instances) if instances else "nothing"


def _configure_logging(verbose: bool, quiet: bool = False) -> None:
    """Log task errors to stderr, unless the host (e.g. pytest) already handles logs.

    ``quiet`` (the demo, which narrates instead) silences the logs.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    if quiet and not verbose:
        root.addHandler(logging.NullHandler())
        return
    handler = logging.StreamHandler(sys.stderr)

    class Formatter(logging.Formatter):
        def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
            return super().formatException(ei) if verbose else ""

        def format(self, record: logging.LogRecord) -> str:
            return super().format(record).rstrip()

    handler.setFormatter(Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


# ---------------------------------------------------------------------------
# The command group
# ---------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="triggers")
@click.option("-v", "--verbose", is_flag=True, help="Log INFO messages and tracebacks.")
def cli(verbose: bool) -> None:
    """Triggers: run tasks when sets of events have fired in a session.

    Session commands (inspect, fire, replay, skip, recover, configure) take
    --storage (default sqlite), --option KEY=VALUE and --uid.
    """
    context = click.get_current_context()
    _configure_logging(verbose, quiet=context.invoked_subcommand == "demo")


@cli.command()
@click.option(
    "--seed", type=int, default=None, help="Seed of the order and the data (random if omitted)."
)
@click.option("--embedded", is_flag=True, help="Fire isEmbeddedApplication first.")
@click.option("--pages", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite file to keep the session in (default: a temporary directory).",
)
@click.option("--uid", default=None, help="Session uid (default: a fresh one).")
@click.option("--concurrent", is_flag=True, help="Fire every trigger at once from threads.")
@user_errors
def demo(
    seed: int | None,
    embedded: bool,
    pages: int,
    db: str | None,
    uid: str | None,
    concurrent: bool,
) -> None:
    """Run the questionnaire workflow on SQLite and threads (no server needed)."""
    from triggers.demo import run_demo

    result = run_demo(
        seed=seed,
        embedded=embedded,
        pages=pages,
        db_path=db,
        uid=uid,
        concurrent=concurrent,
        console=console(),
    )
    if not result.ok:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--check-tasks",
    is_flag=True,
    help="Also check that every `run` names an importable TriggerTask.",
)
@click.option("-i", "--import", "imports", multiple=True, metavar="MODULE")
@user_errors
def validate(config: str, check_tasks: bool, imports: tuple[str, ...]) -> None:
    """Check a configuration file (JSON, or YAML with the yaml extra)."""
    from triggers.cli.render import tasks_table
    from triggers.config import load_configuration_file, parse_configuration
    from triggers.task import resolve_task

    tasks = parse_configuration(load_configuration_file(config))
    if check_tasks:
        import_modules(imports)
        for name in sorted(tasks):
            resolve_task(tasks[name].run, name)
    out = console()
    out.print(tasks_table(tasks, {}, title=f"{config}", show_counts=False))
    click.echo(f"{config} is valid: {len(tasks)} trigger task(s).")


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot"]),
    default="mermaid",
    show_default=True,
)
@user_errors
def graph(config: str, fmt: str) -> None:
    """Print a configuration as a Mermaid flowchart or a Graphviz digraph."""
    from triggers.cli.graph import to_dot, to_mermaid
    from triggers.config import load_configuration_file, parse_configuration

    tasks = parse_configuration(load_configuration_file(config))
    click.echo(to_mermaid(tasks) if fmt == "mermaid" else to_dot(tasks), nl=False)


# ---------------------------------------------------------------------------
# Session commands
# ---------------------------------------------------------------------------
@cli.command()
@session_options
@click.option("--json", "as_json", is_flag=True, help="Print the whole session as JSON.")
@click.option("--instance", default=None, help="Show everything about one instance.")
@user_errors
def inspect(
    storage: str,
    options: tuple[str, ...],
    uid: str,
    manager: str,
    imports: tuple[str, ...],
    as_json: bool,
    instance: str | None,
) -> None:
    """Show a session's trigger tasks and task instances with their status."""
    from triggers.cli.render import compact, instance_detail, instances_table, tasks_table

    mgr = build_manager(storage, options, uid, manager, imports, must_exist=True)
    store = mgr.storage
    if instance is not None:
        found = store[instance]
        if as_json:
            click.echo(json.dumps(found.to_dict(), indent=2, sort_keys=True))
        else:
            console().print(instance_detail(found))
        return
    if as_json:
        click.echo(json.dumps(store.debug_repr(), indent=2, sort_keys=True))
        return
    instances = store.instances
    out = console()
    out.print(tasks_table(store.tasks, instances, title=f"Session {uid}: trigger tasks"))
    out.print(instances_table(instances.values(), title=f"Session {uid}: task instances"))
    latest = store.latest_kwargs
    if latest:
        click.echo(
            "Triggers fired: "
            + ", ".join(f"{t} {compact(k, 40)}".rstrip() for t, k in sorted(latest.items()))
        )
    unresolved = store.get_unresolved_instances()
    logs = store.get_instances_with_unresolved_logs()
    click.echo(
        f"{len(instances)} instance(s), {len(unresolved)} unresolved"
        + (f", {len(logs)} with unresolved error logs" if logs else "")
    )


@cli.command()
@click.argument("trigger")
@click.option("--kwargs", "kwargs_json", default=None, metavar="JSON", help="Trigger kwargs.")
@session_options
@runner_option
@user_errors
def fire(
    trigger: str,
    kwargs_json: str | None,
    storage: str,
    options: tuple[str, ...],
    uid: str,
    manager: str,
    imports: tuple[str, ...],
    runner: str,
) -> None:
    """Fire TRIGGER in a session (kwargs as a JSON object)."""
    kwargs = parse_json_object(kwargs_json, "--kwargs")
    mgr = build_manager(storage, options, uid, manager, imports)
    before = snapshot(mgr)
    with dispatching(runner):
        scheduled = mgr.fire(trigger, kwargs)
    click.echo(f"Fired {trigger} in session {uid}: scheduled {_names(scheduled)}.")
    print_changes(mgr, before)


@cli.command()
@click.argument("instance")
@click.option(
    "--kwargs",
    "kwargs_json",
    default=None,
    metavar="JSON",
    help="Replacement kwargs (trigger name -> kwargs); they replace the clone's kwargs.",
)
@session_options
@runner_option
@user_errors
def replay(
    instance: str,
    kwargs_json: str | None,
    storage: str,
    options: tuple[str, ...],
    uid: str,
    manager: str,
    imports: tuple[str, ...],
    runner: str,
) -> None:
    """Replay a failed INSTANCE: it becomes replayed and a clone runs now."""
    kwargs = parse_json_object(kwargs_json, "--kwargs")
    mgr = build_manager(storage, options, uid, manager, imports, must_exist=True)
    before = snapshot(mgr)
    with dispatching(runner):
        clone = mgr.replay_failed_instance(instance, kwargs)
    click.echo(f"Replayed {instance} in session {uid}: its clone is {clone.name}.")
    print_changes(mgr, before)


@cli.command()
@click.argument("instance")
@click.option("--cascade", is_flag=True, help="Fire the task's name as if it had finished.")
@click.option("--result", "result_json", default=None, metavar="JSON", help="Cascade kwargs.")
@session_options
@runner_option
@user_errors
def skip(
    instance: str,
    cascade: bool,
    result_json: str | None,
    storage: str,
    options: tuple[str, ...],
    uid: str,
    manager: str,
    imports: tuple[str, ...],
    runner: str,
) -> None:
    """Skip a failed INSTANCE (optionally cascading, as if it had finished)."""
    result = parse_json_object(result_json, "--result")
    if result is not None and not cascade:
        raise click.UsageError("--result is the cascade's kwargs: it needs --cascade")
    mgr = build_manager(storage, options, uid, manager, imports, must_exist=True)
    before = snapshot(mgr)
    with dispatching(runner):
        mgr.skip_failed_instance(instance, cascade=cascade, result=result)
    click.echo(
        f"Skipped {instance} in session {uid}" + (" and cascaded." if cascade else ".")
    )
    print_changes(mgr, before)


@cli.command()
@click.option(
    "--older-than",
    type=Duration(),
    default="0",
    show_default=True,
    help="Only instances unchanged for this long (seconds, or 90s/15m/12h/7d).",
)
@click.option(
    "--running",
    is_flag=True,
    help="Also requeue `running` instances (only once you know their worker is gone).",
)
@session_options
@runner_option
@user_errors
def recover(
    older_than: float,
    running: bool,
    storage: str,
    options: tuple[str, ...],
    uid: str,
    manager: str,
    imports: tuple[str, ...],
    runner: str,
) -> None:
    """Dispatch again instances stuck in `scheduled` (e.g. after a crash)."""
    statuses = ("scheduled", "running") if running else ("scheduled",)
    mgr = build_manager(storage, options, uid, manager, imports, must_exist=True)
    before = snapshot(mgr)
    with dispatching(runner):
        recovered = mgr.recover_stuck_instances(older_than=older_than, statuses=statuses)
    click.echo(f"Recovered in session {uid}: {_names(recovered)}.")
    print_changes(mgr, before)


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@session_options
@user_errors
def configure(
    config: str,
    storage: str,
    options: tuple[str, ...],
    uid: str,
    manager: str,
    imports: tuple[str, ...],
) -> None:
    """Add or replace a session's trigger tasks from a configuration file."""
    from triggers.config import load_configuration_file

    data = load_configuration_file(config)
    mgr = build_manager(storage, options, uid, manager, imports)
    tasks = mgr.update_configuration(data)
    click.echo(
        f"Configured {len(tasks)} trigger task(s) in session {uid}: {', '.join(sorted(tasks))}."
    )


@cli.command()
@storage_options
@user_errors
def sessions(storage: str, options: tuple[str, ...]) -> None:
    """List the sessions a storage holds."""
    cls = storage_class(storage)
    parsed = parse_options(options)
    try:
        uids = cls.list_sessions(**parsed)  # type: ignore[attr-defined]
    except NotImplementedError:
        raise click.ClickException(f"the {storage} storage cannot list its sessions") from None
    except TypeError as exc:
        raise click.ClickException(f"--option: the {storage} storage rejects them: {exc}") from None
    for uid in uids:
        click.echo(uid)


@cli.command()
@click.option(
    "--older-than",
    type=Duration(),
    required=True,
    help="Delete sessions unchanged for this long (seconds, or 90s/15m/12h/7d).",
)
@storage_options
@user_errors
def purge(older_than: float, storage: str, options: tuple[str, ...]) -> None:
    """Delete sessions that have not changed for a while."""
    cls = storage_class(storage)
    parsed = parse_options(options)
    method = getattr(cls, "purge", None)
    if method is None:
        raise click.ClickException(f"the {storage} storage cannot purge sessions")
    try:
        count = method(older_than, **parsed)
    except NotImplementedError:
        raise click.ClickException(f"the {storage} storage cannot purge sessions") from None
    except TypeError as exc:
        raise click.ClickException(f"--option: the {storage} storage rejects them: {exc}") from None
    click.echo(f"Purged {count} session(s) unchanged for {older_than:g}s.")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``triggers`` console script."""
    cli.main(args=argv, prog_name="triggers")


if __name__ == "__main__":  # pragma: no cover
    main()
