"""Any JSON data and any trigger name survive every backend unchanged."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triggers import TriggerManager

# Text PostgreSQL can store (no NUL), including quotes, backslashes, braces,
# commas and non-ASCII: everything that SQL, Lua or array literals could trip on.
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
names = text.filter(lambda s: s != "")
# Floats stay below 1e15: PostgreSQL's JSONB rewrites exponent forms such as
# 6.9e+16 as integers (see docs/storage-postgres.md).
floats = st.floats(min_value=-1e15, max_value=1e15, allow_nan=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | floats | text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=8,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(trigger=names, kwargs=st.dictionaries(text, json_values, max_size=4))
def test_fired_kwargs_round_trip(storage_factory, trigger, kwargs):
    manager = TriggerManager(storage_factory(f"rt-{uuid.uuid4().hex}"))
    manager.update_configuration(
        {"t_x": {"after": [trigger, "other"], "run": "triggers.testing.DevNullTask"}}
    )
    manager.fire(trigger, kwargs)
    storage = manager.storage
    storage.invalidate_cache()
    assert storage.latest_kwargs == {trigger: kwargs}
    assert storage["t_x#0"].kwargs == {trigger: kwargs}
    assert storage["t_x#0"].status == "unstarted"
