"""raw_documents: the documents of one inbox folder, chunked, with bad documents quarantined."""

from collections import Counter

import dagster as dg
import polars as pl

from agentinstruct_dagster.inbox import batch_folder
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.llm_resource import LLMResource
from agentinstruct_dagster.pipeline.partitions import batches
from agentinstruct_dagster.stages.ingest import ingest_batch


@dg.asset(
    partitions_def=batches,
    group_name="documents",
    kinds={"deltalake", "polars"},
    description="Raw documents of one inbox batch folder (.txt, .md, .jsonl, .parquet), split into chunks "
    "that fit the model context. Empty, binary, non-UTF-8, over-size and duplicate documents, hidden entries, "
    "links leaving the folder and special files are quarantined with their reason; nothing outside the folder "
    "is read.",
)
def raw_documents(context: dg.AssetExecutionContext, llm: LLMResource, lake: Lake) -> pl.DataFrame:
    profile = llm.profile_settings
    batch = context.partition_key
    try:  # the first place a partition added in the UI reaches the code
        folder = batch_folder(profile.storage.inbox_path, batch)
    except ValueError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    result = ingest_batch(folder, batch, profile.ingest, context_tokens=profile.llm.context_tokens)
    quarantine = lake.write_quarantine(context.asset_key, batch, result.quarantine)
    reasons = Counter(result.quarantine["reason"].to_list())
    context.add_output_metadata(
        {
            "files_read": result.files_read,
            "documents": result.documents["doc_id"].n_unique(),
            "chunks": result.documents.height,
            "duplicates_collapsed": result.duplicates,
            "quarantined_rows": result.quarantine.height,
            "quarantine_reasons": dict(sorted(reasons.items())),
            "quarantine_table": dg.MetadataValue.path(str(quarantine)),
        }
    )
    return result.documents
