"""Command line: demo, batch runs and backfills, export, auditing (quarantine, trace, report), the offline
stand-in, the catalogue."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import click
from pydantic import ValidationError

from agentinstruct_dagster.config.errors import ConfigFileError, validation_problems
from agentinstruct_dagster.config.profiles import PROFILE_ENV_VAR, Profile, StandinJudge, StandinJunk, load_profile
from agentinstruct_dagster.inbox import BatchKeyError, batch_folder, validate_batch_key

if TYPE_CHECKING:
    from agentinstruct_dagster.audit import LakeAudit


class Commands(click.Group):
    """The command group: a configuration or catalogue error ends any command with one line naming the file and
    the field, and exit code 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigFileError as error:
            raise click.ClickException(" ".join(str(error).split())) from None
        except ValidationError as error:
            raise click.ClickException(f"invalid {error.title}: {validation_problems(error)}") from None


@click.group(cls=Commands)
@click.option("--profile", envvar=PROFILE_ENV_VAR, default=None, help="Profile in resources/ (default: standin).")
def main(profile: str | None) -> None:
    """agentinstruct-dagster: AgentInstruct instruction data as a Dagster pipeline."""
    if profile:
        os.environ[PROFILE_ENV_VAR] = profile


FRESH_CALLS = click.option(
    "--fresh-calls", is_flag=True, help="Ignore the call ledger's cached answers; call the model again."
)
SKILLS = click.option("--skill", "skills", multiple=True, help="Run only this skill (repeat for several).")


def _valid_batch_keys(_ctx: click.Context, _param: click.Parameter, value: str | tuple[str, ...]) -> object:
    """The option's batch key(s), refused as a usage error (exit 2) before anything is registered or read."""
    try:
        for key in [value] if isinstance(value, str) else value:
            validate_batch_key(key)
    except BatchKeyError as error:
        raise click.BadParameter(str(error)) from None
    return value


@main.command()
@click.option(
    "--batch",
    default="sample",
    show_default=True,
    callback=_valid_batch_keys,
    help="Batch name for the sample documents.",
)
@FRESH_CALLS
@SKILLS
def demo(batch: str, fresh_calls: bool, skills: tuple[str, ...]) -> None:
    """Run the whole pipeline on the bundled sample documents and print a summary."""
    from agentinstruct_dagster.project import sample_documents_dir

    profile = load_profile()
    target = profile.storage.inbox_path / batch
    if target.is_symlink():
        raise click.ClickException(f"{target} is a symbolic link; the demo batch must be a real inbox folder")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(sample_documents_dir(), target)
    sys.exit(_run_and_report([batch], fresh_calls, list(skills)))


@main.command()
@click.option(
    "--batch",
    "batch_keys",
    multiple=True,
    callback=_valid_batch_keys,
    help="Batch (inbox folder name); repeat for several.",
)
@click.option("--missing", is_flag=True, help="Also every registered batch whose training set is missing.")
@click.option(
    "--in-process",
    is_flag=True,
    help="Run the batches one after another in this process instead of as a Dagster backfill.",
)
@FRESH_CALLS
@SKILLS
def backfill(
    batch_keys: tuple[str, ...], missing: bool, in_process: bool, fresh_calls: bool, skills: tuple[str, ...]
) -> None:
    """Register the given batches and run them as a Dagster backfill: queued and run by the Dagster daemon (one
    started here if none runs), several batches at once within the instance's limits, shown in the UI's
    Backfills tab; waits for it with progress lines, then prints each batch's summary."""
    from agentinstruct_dagster.runs import batches_to_backfill, dagster_instance

    chosen = [key for key in batches_to_backfill(dagster_instance(), list(batch_keys), missing) if _usable(key)]
    if not chosen:
        raise click.UsageError("no batches: name them with --batch or use --missing")
    if in_process:
        sys.exit(_run_and_report(chosen, fresh_calls, list(skills)))
    sys.exit(_backfill_and_report(chosen, fresh_calls, list(skills)))


def _usable(registered: str) -> bool:
    """Whether a registered batch key (one added in the UI, say) is valid; if not, say why it is skipped."""
    try:
        validate_batch_key(registered)
    except BatchKeyError as error:
        click.echo(f"skipped registered batch: {error}", err=True)
        return False
    return True


def _run_and_report(batch_keys: list[str], fresh_calls: bool, skills: list[str]) -> int:
    from agentinstruct_dagster.definitions import build_definitions
    from agentinstruct_dagster.report import summarize
    from agentinstruct_dagster.runs import dagster_instance, run_batches
    from agentinstruct_dagster.storage.lease import BatchBusyError

    profile = load_profile()
    _check_folders(profile, batch_keys)
    defs = build_definitions(profile)
    instance = dagster_instance(profile)
    failed = 0
    for key in batch_keys:
        started, since = time.perf_counter(), datetime.now(UTC)
        try:
            result = run_batches(defs, instance, [key], fresh_calls=fresh_calls, skills=skills)[key]
        except (ValueError, BatchBusyError) as error:
            raise click.ClickException(str(error)) from None
        click.echo(summarize(profile, defs, key, result, time.perf_counter() - started, since))
        click.echo()
        failed += not result.success
    return 1 if failed else 0


def _backfill_and_report(batch_keys: list[str], fresh_calls: bool, skills: list[str]) -> int:
    from agentinstruct_dagster.backfills import StoredRun, daemon_running, launch_backfill, wait_for_backfill
    from agentinstruct_dagster.definitions import build_definitions
    from agentinstruct_dagster.report import summarize
    from agentinstruct_dagster.runs import dagster_instance, register_batches, skill_selection

    profile = load_profile()
    _check_folders(profile, batch_keys)
    defs = build_definitions(profile)
    instance = dagster_instance(profile)
    selection = skill_selection(defs, skills) if skills else list(defs.resolve_asset_graph().get_all_asset_keys())
    started, since = time.perf_counter(), datetime.now(UTC)
    register_batches(instance, batch_keys)
    backfill_id = launch_backfill(defs, instance, batch_keys, selection, fresh_calls=fresh_calls)
    click.echo(f"backfill {backfill_id}: {len(batch_keys)} batch(es) queued for the Dagster daemon (UI: Backfills)")
    home = Path(os.environ["DAGSTER_HOME"])
    with daemon_running(instance, home / "logs" / "daemon.log"):
        runs = wait_for_backfill(instance, backfill_id, len(batch_keys), click.echo)
    click.echo(f"backfill {backfill_id} ended after {time.perf_counter() - started:.1f} s\n")
    failed = 0
    for key in batch_keys:
        run = runs.get(key)
        if run is None:
            click.echo(f"batch {key!r}: no run was launched (see the backfill in the UI)")
            failed += 1
            continue
        result = StoredRun.load(instance, run)
        click.echo(summarize(profile, defs, key, result, result.seconds, since))
        click.echo()
        failed += not result.success
    return 1 if failed else 0


def _check_folders(profile: Profile, batch_keys: list[str]) -> None:
    """A clear error naming every batch whose inbox folder is missing or not usable."""
    problems = []
    for key in batch_keys:
        try:
            batch_folder(profile.storage.inbox_path, key)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise click.ClickException("; ".join(problems))


@main.command("instance")
def prepare_instance() -> None:
    """Prepare the Dagster instance for plain `dagster` and `dg` commands: write the project's settings into
    $DAGSTER_HOME/dagster.yaml (default data/dagster_home; one run per batch, run monitoring, no telemetry) and
    set the pool `llm` to the profile's `llm.parallel_runs`. Prints the shell line that selects it:
    `eval "$(.venv/bin/agentinstruct instance)"`."""
    from agentinstruct_dagster.runs import dagster_instance

    profile = load_profile()
    dagster_instance(profile)
    home = os.environ["DAGSTER_HOME"]
    click.echo(
        f"Dagster instance {home}: project settings in dagster.yaml, pool 'llm' limit {profile.llm.parallel_runs} "
        f"(profile {profile.name!r})",
        err=True,
    )
    click.echo(f"export DAGSTER_HOME={shlex.quote(home)}")


@main.command("forget")
@click.argument("batch")
def forget(batch: str) -> None:
    """Unregister BATCH (e.g. a partition added in the UI whose inbox folder never existed, or a batch whose folder
    was deleted for good). Its rows in the lake stay; if its folder is still in the inbox, the sensor registers it
    again."""
    from agentinstruct_dagster.pipeline.partitions import BATCHES
    from agentinstruct_dagster.runs import dagster_instance

    instance = dagster_instance(load_profile())
    if batch not in instance.get_dynamic_partitions(BATCHES):
        raise click.ClickException(f"batch {batch!r} is not registered")
    instance.delete_dynamic_partition(BATCHES, batch)
    click.echo(f"batch {batch!r} unregistered (its rows in the lake are kept)")


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("data/export"), show_default=True)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option("--batch", "batch_keys", multiple=True, help="Batches to export (default: all).")
@click.option("--lineage", is_flag=True, help="Add id, doc_id, seed_id, parent_id, batch and skill to every record.")
def export(out_dir: Path, fmt: str, batch_keys: tuple[str, ...], lineage: bool) -> None:
    """Write the training set as one file per split with a `messages` column (orca-agentinstruct format)."""
    from agentinstruct_dagster.export import ExportError, export_training_set
    from agentinstruct_dagster.storage.paths import table_path

    table = table_path(load_profile().storage.root_path, ["training_set"])
    try:
        written = export_training_set(table, out_dir, fmt, list(batch_keys) or None, lineage)
    except ExportError as error:
        raise click.ClickException(str(error)) from None
    for split, path in written.items():
        click.echo(f"{split}: {path}")


def _lake_audit() -> LakeAudit:
    """The lake of the active profile, read over the definitions' assets in pipeline order."""
    from agentinstruct_dagster.audit import LakeAudit
    from agentinstruct_dagster.definitions import build_definitions
    from agentinstruct_dagster.report import stage_keys

    profile = load_profile()
    return LakeAudit(profile.storage.root_path, stage_keys(build_definitions(profile)), profile.storage.storage_options)


def _audit_of_batch(batch: str) -> LakeAudit:
    """The lake's audit, or a clear error when it holds no row of the batch."""
    from agentinstruct_dagster.audit import UnknownBatchError

    audit = _lake_audit()
    try:
        audit.require_batch(batch)
    except UnknownBatchError as error:
        raise click.ClickException(str(error)) from None
    return audit


@main.command("quarantine")
@click.option("--batch", required=True, help="The batch whose quarantine to list.")
@click.option("--reason", default=None, help="Only this reason, e.g. llm_invalid_output or judge_low_score.")
@click.option("--stage", default=None, help="Only this stage: an asset key (skill/stage), a skill or a stage name.")
@click.option("--limit", default=50, show_default=True, help="Rows to list (the counts cover every row).")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True)
def quarantine_listing(batch: str, reason: str | None, stage: str | None, limit: int, fmt: str) -> None:
    """List a batch's quarantined rows across every stage: counts per stage and reason, then the rows."""
    from agentinstruct_dagster.audit import QUARANTINE_COLUMNS, quarantine_filter, render_quarantine

    audit = _audit_of_batch(batch)
    rows = quarantine_filter(audit.quarantined(batch, [*QUARANTINE_COLUMNS, "batch", "payload"]), reason, stage)
    if not rows.height:
        filters = ", ".join(f"{name} {value!r}" for name, value in (("reason", reason), ("stage", stage)) if value)
        click.echo(f"batch {batch!r}: no quarantined rows" + (f" with {filters}" if filters else ""))
    elif fmt == "jsonl":
        for row in rows.head(limit).iter_rows(named=True):
            click.echo(json.dumps(row, ensure_ascii=False))
    else:
        click.echo(render_quarantine(batch, rows, limit))


@main.command("trace")
@click.argument("row_id", metavar="ID")
@click.option("--batch", default=None, help="The batch to trace in, when the id is in several.")
def trace_row(row_id: str, batch: str | None) -> None:
    """Show the chain of any row id (training pair, judged, refined, seed, transformed, chunk or quarantine row):
    from the source document through every stage to the training pair, or to where and why it was rejected."""
    from agentinstruct_dagster.audit import render_trace
    from agentinstruct_dagster.pipeline.automation import FINAL_ASSET

    audit = _lake_audit()
    found = audit.trace(row_id.strip(), batch)
    if found is None:
        where = f" of batch {batch!r}" if batch else ""
        raise click.ClickException(f"no row with id {row_id!r} in any table{where} under {audit.root}")
    click.echo(render_trace(found, FINAL_ASSET))


@main.command("report")
@click.option("--batch", required=True, help="The batch to report on.")
def quality_report(batch: str) -> None:
    """Print a batch's quality report (what the quality_report asset shows and writes as HTML and JSON)."""
    from agentinstruct_dagster.quality_report import compute_report, report_paths, to_text

    audit = _audit_of_batch(batch)
    click.echo(to_text(compute_report(audit, batch)))
    html_path, _ = report_paths(audit.root, batch)
    if html_path.exists():
        click.echo(f"\nHTML report (as of the last quality_report materialization): {html_path}")


@main.command()
@click.option("--markdown", "as_markdown", is_flag=True, help="A markdown table (the README's).")
@click.option("--agents", is_flag=True, help="Also list each skill's agents and instruction types.")
def catalogue(as_markdown: bool, agents: bool) -> None:
    """List the catalogue's skills (assets/*.yaml): split, agents, instruction types, refinement rounds."""
    from agentinstruct_dagster import catalogue_table
    from agentinstruct_dagster.config.catalogue import load_catalogue

    skills = list(load_catalogue().values())
    click.echo(catalogue_table.markdown(skills) if as_markdown else catalogue_table.plain(skills))
    for skill in skills if agents else []:
        click.echo(f"\n{skill.skill}")
        click.echo(f"  agents: {', '.join(agent.name for agent in skill.transformation.agents)}")
        click.echo(f"  types: {', '.join(kind.name for kind in skill.seed.types)}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8088, show_default=True)
@click.option("--latency", default=0.0, show_default=True, help="Seconds added to every answer (median if --sigma).")
@click.option("--sigma", default=0.0, show_default=True, help="> 0: lognormal latency with this sigma.")
@click.option("--cap", type=int, default=None, help="Answer 429 above this many requests in flight.")
@click.option("--cap-retry-after", default=0.1, show_default=True, help="Retry-After of the cap's 429s.")
@click.option(
    "--fault", "faults", multiple=True, metavar="KIND:RATE", help="Inject a fault at a rate, e.g. server_error:0.05."
)
@click.option(
    "--junk",
    type=click.Choice(get_args(StandinJunk)),
    default="none",
    show_default=True,
    help="Answer schema-valid junk in every free string.",
)
@click.option(
    "--judge",
    type=click.Choice(get_args(StandinJudge)),
    default="high",
    show_default=True,
    help="Scores of JudgeVerdict answers: maximum, minimum or hashed.",
)
def standin(
    host: str,
    port: int,
    latency: float,
    sigma: float,
    cap: int | None,
    cap_retry_after: float,
    faults: tuple[str, ...],
    junk: str,
    judge: str,
) -> None:
    """Serve the offline stand-in (OpenAI-compatible, deterministic, not a model) until interrupted."""
    from agentinstruct_dagster.standin.server import Fault, StandinConfig, serve_forever

    injected = []
    for spec in faults:
        kind, _, rate = spec.partition(":")
        injected.append(Fault(kind, first_attempts=0, rate=float(rate or 1)))
    config = StandinConfig(
        latency_seconds=latency,
        latency_sigma=sigma,
        max_in_flight=cap,
        cap_retry_after_seconds=cap_retry_after,
        faults=tuple(injected),
        junk=junk,
        judge=judge,
    )
    serve_forever(config, host, port)
