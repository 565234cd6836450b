def test_fire_runs_task(manager):
    manager.update_configuration({"t_a": {"after": ["x", "y"], "run": "triggers.testing.PassThruTask"}})
    manager.fire("y", {"b": 2})
    manager.fire("x", {"a": 1})
    from triggers.runners.threading import ThreadingTaskRunner
    ThreadingTaskRunner.join_all()
    manager.storage.invalidate_cache()
    inst = manager.storage["t_a#0"]
    assert inst.status == "finished"
    assert inst.metadata["result"] == {"kwargs": {"x": {"a": 1}, "y": {"b": 2}}}
