"""A blocking Great Expectations check per stage table and batch: a failure stops downstream stages."""

import dagster as dg

from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.partitions import batches


def build_suite_check(asset_key: dg.AssetKey, suite: str) -> dg.AssetChecksDefinition:
    """Validates one batch of `asset_key`'s table against `expectations/<suite>.json`."""

    @dg.asset_check(
        asset=asset_key,
        name=f"gx_{suite}",
        blocking=True,
        partitions_def=batches,
        description=f"Great Expectations suite expectations/{suite}.json on this batch's rows.",
    )
    def suite_check(context: dg.AssetCheckExecutionContext, lake: Lake) -> dg.AssetCheckResult:
        from agentinstruct_dagster.quality.gx_suites import suite_path_for, validate_frame

        rows = lake.read(asset_key, context.partition_key)
        outcome = validate_frame(rows, suite_path_for(suite))
        return dg.AssetCheckResult(
            passed=outcome.success,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "rows": outcome.row_count,
                "expectations_evaluated": outcome.evaluated,
                "expectations_failed": outcome.failed,
                "failures": dg.MetadataValue.md(outcome.markdown()),
            },
        )

    return suite_check
