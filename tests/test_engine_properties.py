"""Property-based tests of the pure core (no storage, no runner).

A session is simulated with :class:`SessionData`: each event loads the slice a
storage would load, runs a :class:`Step` and applies its changes, exactly as
``BaseTriggerStorage.run_step`` does.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.config import parse_configuration
from triggers.engine import Step
from triggers.storages.base import SessionData
from triggers.types import STATUS_ABANDONED, STATUS_SCHEDULED, STATUS_UNSTARTED

RUN = "triggers.testing.DevNullTask"


class Session:
    """An in-memory session driven through the engine, recording dispatches."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.data = SessionData()
        self.dispatched: list[tuple[int, str]] = []  # (fire index, instance name)
        self.fires = 0
        tasks = parse_configuration(config)
        step = Step(self.data.slice((), ()), now=0.0)
        step.configure(tasks)
        self.data.apply(step.changes)

    def fire(self, trigger: str, kwargs: dict[str, Any]) -> list[str]:
        step = Step(self.data.slice({trigger}, ()), now=float(self.fires))
        scheduled = step.fire(trigger, kwargs)
        self.data.apply(step.changes)
        names = [i.name for i in scheduled]
        self.dispatched += [(self.fires, n) for n in names]
        self.fires += 1
        return names

    def instances(self, task: str) -> dict[str, dict[str, Any]]:
        return {n: d for n, d in self.data.instances.items() if d["task"] == task}


after_sets = st.sets(st.sampled_from("abcd"), min_size=1, max_size=4)
noise = st.sampled_from(["a", "b", "c", "d", "x", "y", "n"])


@settings(max_examples=300, deadline=None)
@given(after=after_sets, firings=st.lists(noise, max_size=25))
def test_one_shot_runs_exactly_once_after_its_last_trigger(after, firings):
    session = Session({"t_x": {"after": sorted(after), "run": RUN}})
    seen: set[str] = set()
    completed_at = None
    for i, trigger in enumerate(firings):
        session.fire(trigger, {"i": i})
        seen.add(trigger)
        if completed_at is None and after <= seen:
            completed_at = i
    if completed_at is None:
        assert session.dispatched == []
    else:
        assert session.dispatched == [(completed_at, "t_x#0")]
        instance = session.data.instances["t_x#0"]
        # Each trigger's kwargs are those of its first firing (later ones are not applied).
        for trigger in after:
            assert instance["kwargs"][trigger] == {"i": firings.index(trigger)}
    # One-shot: never more than one instance.
    assert set(session.instances("t_x")) <= {"t_x#0"}


@settings(max_examples=300, deadline=None)
@given(
    after=st.sets(st.sampled_from("abc"), min_size=1, max_size=3),
    unless=st.sets(st.sampled_from("xyz"), min_size=1, max_size=3),
    firings=st.lists(st.sampled_from("abcxyzn"), max_size=25),
)
def test_unless_abandons_only_when_complete_first(after, unless, firings):
    session = Session({"t_x": {"after": sorted(after), "unless": sorted(unless), "run": RUN}})
    seen: set[str] = set()
    outcome = None
    for i, trigger in enumerate(firings):
        session.fire(trigger, {"i": i})
        seen.add(trigger)
        if outcome is None and unless <= seen:
            outcome = "abandoned"
        elif outcome is None and after <= seen:
            outcome = ("scheduled", i)
    instances = session.instances("t_x")
    if outcome == "abandoned":
        assert session.dispatched == []
        assert instances["t_x#0"]["status"] == STATUS_ABANDONED
    elif outcome is None:
        assert session.dispatched == []
        assert all(d["status"] == STATUS_UNSTARTED for d in instances.values())
    else:
        assert session.dispatched == [(outcome[1], "t_x#0")]
        # Completing the unless set later leaves a started instance alone.
        assert instances["t_x#0"]["status"] == STATUS_SCHEDULED


@settings(max_examples=300, deadline=None)
@given(
    others=st.sets(st.sampled_from("abc"), max_size=3),
    firings=st.lists(st.sampled_from("abcen"), max_size=30),
)
def test_and_every_gets_one_instance_per_firing(others, firings):
    session = Session({"t_e": {"after": sorted(others), "andEvery": "e", "run": RUN}})
    latest: dict[str, Any] = {}
    for i, trigger in enumerate(firings):
        session.fire(trigger, {"i": i})
        latest[trigger] = {"i": i}
    e_firings = [i for i, t in enumerate(firings) if t == "e"]
    instances = session.instances("t_e")
    with_e = [d for d in instances.values() if "e" in d["kwargs"]]
    # Exactly one instance per firing of e, each with that firing's kwargs.
    assert sorted(d["kwargs"]["e"]["i"] for d in with_e) == e_firings
    if others <= set(firings):
        # Every instance eventually received the other triggers and was dispatched once.
        assert len(session.dispatched) == len(e_firings)
        assert len({n for _, n in session.dispatched}) == len(e_firings)
        for d in with_e:
            assert set(d["kwargs"]) == others | {"e"}
            assert d["status"] == STATUS_SCHEDULED
    else:
        assert session.dispatched == []
    # An instance created by the k-th firing of e carries the latest kwargs of the other
    # triggers that had fired before it.
    for d in with_e:
        fired_at = d["kwargs"]["e"]["i"]
        for trigger in others:
            before = [i for i, t in enumerate(firings[:fired_at]) if t == trigger]
            if before and d["metadata"]["timestamps"]["created"] == float(fired_at):
                assert d["kwargs"][trigger] == {"i": before[-1]}


@settings(max_examples=200, deadline=None)
@given(firings=st.permutations(["a", "b", "c", "d"]))
def test_cascades_chain_in_any_order(firings):
    session = Session(
        {
            "t_1": {"after": ["a", "b"], "run": RUN},
            "t_2": {"after": ["t_1", "c"], "run": RUN},
            "t_3": {"after": ["t_2", "d"], "run": RUN},
        }
    )
    pending: list[str] = []
    for trigger in firings:
        pending += session.fire(trigger, {"t": trigger})
        while pending:  # finish every scheduled task, cascading its result
            name = pending.pop(0)
            task = name.split("#")[0]
            step = Step(session.data.slice({task}, {name}), now=0.0)
            step.set_status(name, "finished", {"result": {"from": name}})
            cascaded = [i.name for i in step.fire(task, {"from": name})]
            session.data.apply(step.changes)
            session.dispatched += [(-1, n) for n in cascaded]
            pending += cascaded
    assert [n for _, n in session.dispatched] == ["t_1#0", "t_2#0", "t_3#0"]
    assert session.data.instances["t_3#0"]["kwargs"]["t_2"] == {"from": "t_2#0"}
