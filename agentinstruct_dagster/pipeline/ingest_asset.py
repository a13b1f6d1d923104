"""raw_documents: the documents of one inbox folder, chunked, with bad documents quarantined."""

from collections import Counter

import dagster as dg

from agentinstruct_dagster.pipeline.generation import Generation
from agentinstruct_dagster.pipeline.io_manager import Outcome
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.llm_resource import LLMResource
from agentinstruct_dagster.pipeline.partitions import batches
from agentinstruct_dagster.stages.ingest import ingest_batch


@dg.asset(
    partitions_def=batches,
    group_name="documents",
    kinds={"deltalake", "polars"},
    description="Raw documents of one inbox batch folder (.txt, .md, .html, .pdf, source code, .jsonl, .parquet), "
    "split into chunks that fit the model context. Empty, binary, undecodable, over-size and duplicate documents, "
    "pages without main text, PDFs without a text layer, hidden entries, "
    "links leaving the folder and special files are quarantined with their reason; nothing outside the folder "
    "is read.",
)
def raw_documents(
    context: dg.AssetExecutionContext, llm: LLMResource, lake: Lake, generation: Generation
) -> Outcome:
    batch = context.partition_key
    try:  # the first place a partition added in the UI reaches the code
        folder = lake.batch_folder(batch)
    except ValueError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    result = ingest_batch(folder, batch, generation.ingest, llm.settings.context_tokens, lake.options)
    reasons = Counter(result.quarantine["reason"].to_list())
    context.add_output_metadata(
        {
            "files_read": result.files_read,
            "documents": result.documents["doc_id"].n_unique(),
            "chunks": result.documents.height,
            "duplicates_collapsed": result.duplicates,
            "quarantine_reasons": dict(sorted(reasons.items())),
        }
    )
    return Outcome(result.documents, result.quarantine)
