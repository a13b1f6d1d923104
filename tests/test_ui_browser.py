"""The Dagster UI as an auditor sees it: a real webserver on a materialized batch, driven by headless Chromium.

Debian's `chromium` is driven through Playwright's `executable_path` (no browser download). Set
`UI_SCREENSHOTS=<folder>` to keep the screenshots the test takes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import PASSAGES, write_profile
from playwright.sync_api import Page, sync_playwright

from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.project import project_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BATCH = "audited"
SKILL = "reading_comprehension"


@dataclass(frozen=True)
class Server:
    url: str
    shots: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(tmp: Path) -> dict[str, str]:
    profiles = tmp / "profiles"
    profiles.mkdir()
    write_profile(profiles, tmp)
    (tmp / "dagster_home").mkdir()
    return {
        **os.environ,
        "AGENTINSTRUCT_PROFILES_DIR": str(profiles),
        "AGENTINSTRUCT_PROFILE": "test",
        "DAGSTER_HOME": str(tmp / "dagster_home"),
    }


def _wait_until_up(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"dagster-webserver did not answer within 120 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One batch (two passages and an empty file, which raw_documents quarantines) run by the project's CLI,
    then the webserver on the same instance, with the first-visit pop-up dismissed."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("ui")
    env = _environment(tmp)
    folder = tmp / "inbox" / BATCH
    folder.mkdir(parents=True)
    for index, text in enumerate(PASSAGES[:2]):
        (folder / f"doc{index}.txt").write_text(text, encoding="utf-8")
    (folder / "empty.txt").write_text("", encoding="utf-8")
    cli = [str(Path(sys.executable).with_name("agentinstruct")), "backfill", "--in-process", "--batch", BATCH]
    subprocess.run(cli, env=env, cwd=project_dir(), check=True, capture_output=True, timeout=600)
    port = _free_port()
    log = tmp / "webserver.log"
    command = [
        str(Path(sys.executable).with_name("dagster-webserver")),
        *("-m", "agentinstruct_dagster.definitions", "-h", "127.0.0.1", "-p", str(port)),
    ]
    with log.open("wb") as output:
        server = subprocess.Popen(command, env=env, cwd=project_dir(), stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, server, log)
        httpx.post(f"{url}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30).raise_for_status()
        shots = Path(os.environ.get("UI_SCREENSHOTS") or tmp / "shots")
        shots.mkdir(parents=True, exist_ok=True)
        yield Server(url, shots)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser(ui: Server) -> Iterator[Page]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1600, "height": 1000})
        try:
            yield page
        finally:
            chromium.close()


def _open(page: Page, ui: Server, path: str, shot: str) -> Page:
    page.goto(f"{ui.url}{path}", wait_until="networkidle", timeout=120_000)
    page.screenshot(path=ui.shots / f"{shot}.png", full_page=True)
    return page



def _metadata_entry(page: Page, key: str) -> str:
    """The text of one metadata entry of the latest materialization, from its key to the next entry."""
    body = page.inner_text("body")
    start = body.index(f"\n{key}\n")
    return body[start : start + 2000]


def test_an_auditor_sees_the_batchs_quarantine_on_its_quality_report(ui: Server, browser: Page) -> None:
    page = _open(browser, ui, f"/assets/quality_report?partition={BATCH}", "quality_report")
    empty_id = content_id("quarantine", "raw_documents", "empty.txt", "empty")
    by_stage = _metadata_entry(page, "quarantine_by_stage")
    assert re.search(rf"raw_documents\s+empty\s+1\s+{empty_id}", by_stage), by_stage
    preview = _metadata_entry(page, "quarantined_rows_preview")
    assert re.search(rf"raw_documents\s+empty\s+empty or whitespace only.*\s+empty\.txt\s+{empty_id}", preview), preview


def test_a_stage_page_shows_content_before_ids_described_columns_and_calls_by_kind(ui: Server, browser: Page) -> None:
    page = _open(browser, ui, f"/assets/{SKILL}/seed_instructions?partition={BATCH}", "seed_instructions")
    body = page.inner_text("body")
    assert "Stable content hash of the row" in body and "The answer to the instruction." in body
    for count in ("calls_made", "calls_cached", "calls_failed"):
        assert f"\n{count}\n" in body
    header = _metadata_entry(page, "sample_rows").split("\n")[6]
    columns = header.split("\t")
    assert columns.index("instruction") < columns.index("answer") < columns.index("id"), header
    assert columns[-4:] == ["id", "parent_id", "seed_id", "doc_id"][: len(columns[-4:])] or "id" in columns[-4:], header


def test_each_groups_lineage_shows_its_stages_by_their_full_names(ui: Server, browser: Page) -> None:
    page = _open(browser, ui, f'/asset-groups~group%3A"{SKILL}"', "group")
    page.get_by_text("judged_instructions").first.wait_for(timeout=60_000)
    body = page.inner_text("body")
    for stage in ("transformed_texts", "seed_instructions", "refined_instructions", "judged_instructions"):
        assert stage in body
    shortened = re.findall(r"\w+…\w+", body)  # Dagster's middle truncation, e.g. "refi…_instructions"
    assert not shortened, shortened


def test_a_run_shows_its_summary_event_and_totals_as_tags(ui: Server, browser: Page) -> None:
    page = _open(browser, ui, "/runs", "runs")
    assert re.search(r"agentinstruct/calls_made: [1-9]\d*", page.inner_text("body"))
    page.locator("a[href^='/runs/']").first.click()
    page.get_by_text("run summary: calls_made").first.wait_for(timeout=60_000)
    page.screenshot(path=ui.shots / "run.png", full_page=True)
