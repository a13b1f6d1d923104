"""The definitions load from the catalogue and profile and form the documented asset graph."""

from __future__ import annotations

import dagster as dg
from conftest import Project

from agentinstruct_dagster.definitions import build_definitions

RC = "reading_comprehension"


def test_asset_graph_lineage_groups_and_checks(project: Project) -> None:
    defs = build_definitions(project.profile)
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey
    expected_parents = {
        key("raw_documents"): set(),
        key([RC, "transformed_texts"]): {key("raw_documents")},
        key([RC, "seed_instructions"]): {key([RC, "transformed_texts"])},
        key([RC, "refined_instructions"]): {key([RC, "seed_instructions"])},
        key([RC, "judged_instructions"]): {key([RC, "refined_instructions"])},
        key("training_set"): {key([RC, "judged_instructions"])},
        key("quality_report"): {key("training_set")},
    }
    assert set(graph.get_all_asset_keys()) == set(expected_parents)
    for asset_key, parents in expected_parents.items():
        node = graph.get(asset_key)
        assert set(node.parent_keys) == parents
        assert node.partitions_def is not None and node.partitions_def.name == "batches"
    assert graph.get(key([RC, "seed_instructions"])).group_name == RC
    assert graph.get(key("training_set")).group_name == "training"

    checks = {(check_key.asset_key, check_key.name) for check_key in graph.asset_check_keys}
    stages = ("transformed_texts", "seed_instructions", "refined_instructions", "judged_instructions")
    assert checks == {
        (key("raw_documents"), "gx_raw_documents"),
        *((key([RC, stage]), f"gx_{stage}") for stage in stages),
        *((key([RC, stage]), "quarantine_gate") for stage in stages),
        (key([RC, "refined_instructions"]), "gx_qa_shape"),
        (key("training_set"), "gx_training_set"),
        (key("training_set"), "batch_gates"),
    }
    assert all(graph.get_check_spec(check_key).blocking for check_key in graph.asset_check_keys)
    assert {sensor.name for sensor in defs.sensors} == {"inbox_sensor", "abandoned_runs_sensor"}
    assert {schedule.name: schedule.cron_schedule for schedule in defs.schedules} == {
        "catch_up_schedule": "0 2 * * *",
        "lake_maintenance_schedule": "0 4 * * 0",
    }


def test_workspace_module_loads() -> None:
    from agentinstruct_dagster import definitions

    assert isinstance(definitions.defs, dg.Definitions)
