"""Stage 4, curation: each refinement chain's final round is checked for duplicates (within the batch and
against earlier batches) and for benchmark contamination, then scored by an LLM judge against the skill's
rubric. What survives becomes the training set; the rest goes to quarantine with the evidence."""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache
from statistics import fmean
from typing import Any

import polars as pl
from pydantic import BaseModel, Field, create_model

from agentinstruct_dagster.config.catalogue import Judge, Skill
from agentinstruct_dagster.config.curation import Curation
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.schemas import AgentOutput
from agentinstruct_dagster.llm.types import LLMRequest
from agentinstruct_dagster.quality.decontamination import BenchmarkIndex, contaminated
from agentinstruct_dagster.quality.dedup import find_duplicates
from agentinstruct_dagster.stages.common import StageOutput, provenance

AGENT = "judge"
SCORE_RANGE = (1, 5)


def final_rounds(refined: pl.DataFrame) -> pl.DataFrame:
    """Each chain's final round: the last round it completed (a round rejected by a rule, a shape check or a
    failed call ends its chain, so the round before it is final)."""
    return refined.sort("round").group_by("seed_id", maintain_order=True).last().sort("seed_id")


@lru_cache(maxsize=64)
def verdict_model(criteria: tuple[str, ...]) -> type[BaseModel]:
    """The judge's answer for a rubric: an integer score per criterion and a short rationale."""
    low, high = SCORE_RANGE
    fields: dict[str, Any] = {name: (int, Field(ge=low, le=high)) for name in criteria}
    fields["rationale"] = (str, Field(min_length=1, description="Two or three sentences explaining the scores."))
    return create_model("JudgeVerdict", __base__=AgentOutput, **fields)


def low_score_reason(scores: dict[str, int], judge: Judge) -> str | None:
    """Why scores fall below the rubric's thresholds, or None."""
    problems = []
    mean = fmean(scores.values())
    if mean < judge.min_mean_score:
        problems.append(f"mean {mean:.2f} < {judge.min_mean_score}")
    problems += [
        f"{name} {score} < {judge.min_criterion_score}"
        for name, score in scores.items()
        if score < judge.min_criterion_score
    ]
    return "; ".join(problems) or None


def comparable_text(frame: pl.DataFrame, fields: list[str]) -> pl.DataFrame:
    """`id` and the text dedup and decontamination compare: the chosen fields joined by newlines."""
    return frame.select("id", text=pl.concat_str([pl.col(name).fill_null("") for name in fields], separator="\n"))


async def judge_instructions(
    refined: pl.DataFrame,
    skill: Skill,
    engine: LLMEngine,
    *,
    batch: str,
    stage: str,
    earlier: pl.DataFrame,
    benchmarks: BenchmarkIndex,
    curation: Curation,
    **_: Any,
) -> StageOutput:
    """Dedup (exact and near, within the batch and against `earlier` batches' kept rows), decontamination
    against the benchmark files, then one judge call per surviving final round."""
    judge = skill.judge
    output = StageOutput(stage=stage, batch=batch)
    candidates = final_rounds(refined)
    # Dedup and decontamination are CPU work: in a thread, so other skills' calls in the same loop go on.
    duplicates = await asyncio.to_thread(reject_duplicates, candidates, earlier, curation, output)
    unique = candidates.filter(~pl.col("id").is_in(list(duplicates)))
    rejected = duplicates | await asyncio.to_thread(reject_contaminated, unique, benchmarks, curation, output)
    survivors = [row for row in candidates.iter_rows(named=True) if row["id"] not in rejected]
    model = verdict_model(tuple(criterion.name for criterion in judge.criteria))
    criteria = "\n".join(f"- {criterion.name}: {criterion.description}" for criterion in judge.criteria)

    async def score(row: dict[str, Any]) -> None:
        result = await engine.call(
            LLMRequest(
                agent=AGENT,
                role="judge",
                system=judge.system_prompt,
                user=judge.prompt.format(
                    text=row["text"],
                    instruction=row["instruction"],
                    answer=row["answer"],
                    instruction_type=row["instruction_type"],
                    criteria=criteria,
                ),
                response_model=model,
                prompt_version=judge.prompt_version,
            )
        )
        output.count(result)
        if not result.ok:
            output.reject_failed_call(result, agent=AGENT, parent_id=row["id"])
            return
        verdict = result.value.model_dump()
        rationale = verdict.pop("rationale").strip()
        judged = {
            "id": content_id("judged", row["id"], judge.prompt_version, verdict),
            "parent_id": row["id"],
            **{name: row[name] for name in ("seed_id", "doc_id", "skill", "instruction_type", "round")},
            "batch": batch,
            **{name: row[name] for name in ("text", "instruction", "answer", "structured")},
            "scores": json.dumps(verdict, sort_keys=True),
            "score": fmean(verdict.values()),
            "rationale": rationale,
            **provenance(result, agent=AGENT, prompt_version=judge.prompt_version),
        }
        reason = low_score_reason(verdict, judge)
        if reason is None:
            output.rows.append(judged)
            return
        output.reject("judge_low_score", f"{reason}: {rationale}", parent_id=row["id"], source=AGENT, payload=judged)

    async def main() -> None:
        await asyncio.gather(*(score(row) for row in survivors))

    await engine.session(main, expected_calls=len(survivors))
    return output


def reject_duplicates(
    candidates: pl.DataFrame, earlier: pl.DataFrame, curation: Curation, output: StageOutput
) -> set[str]:
    """Quarantine candidates that repeat another candidate or an earlier batch's row; their ids."""
    fields = curation.dedup.fields
    duplicates = find_duplicates(
        comparable_text(candidates, fields), comparable_text(earlier, fields), curation.dedup
    )
    by_id = {row["id"]: row for row in candidates.iter_rows(named=True)}
    for duplicate in duplicates.iter_rows(named=True):
        row = by_id[duplicate["id"]]
        output.reject(
            f"duplicate_{duplicate['kind']}",
            f"duplicates row {duplicate['duplicate_of']} (similarity {duplicate['similarity']:.2f})",
            parent_id=row["id"],
            source="dedup",
            payload=row,
        )
    return set(duplicates["id"].to_list())


def reject_contaminated(
    candidates: pl.DataFrame, benchmarks: BenchmarkIndex, curation: Curation, output: StageOutput
) -> set[str]:
    """Quarantine candidates that share an n-gram with a benchmark's test items; their ids."""
    hits = contaminated(comparable_text(candidates, curation.decontamination.fields), benchmarks)
    strongest = hits.sort("id", "overlaps", "benchmark", descending=[False, True, False])
    hits = strongest.unique("id", keep="first", maintain_order=True)
    by_id = {row["id"]: row for row in candidates.iter_rows(named=True)}
    for hit in hits.iter_rows(named=True):
        output.reject(
            "contaminated",
            f"benchmark {hit['benchmark']}: {hit['overlaps']} shared n-gram(s), e.g. {hit['matched_ngram']!r}",
            parent_id=hit["id"],
            source="decontamination",
            payload=by_id[hit["id"]],
        )
    return set(hits["id"].to_list())
