"""What the quality gates do: the sample documents through every skill against the stand-in, good or in one
of its junk or judge modes, in a throwaway project; prints the run's summary (failed gates, quarantine
reasons, training pairs) and exits with the run's status.

Usage: .venv/bin/python bench/gates.py [--junk MODE] [--judge MODE] [--skill NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import get_args

import yaml

from agentinstruct_dagster.config.profiles import StandinJudge, StandinJunk
from agentinstruct_dagster.project import profiles_dir, sample_documents_dir

BATCH = "sample"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junk", choices=get_args(StandinJunk), default="none")
    parser.add_argument("--judge", choices=get_args(StandinJudge), default="high")
    parser.add_argument("--skill", action="append", default=[], help="Only this skill (repeat); all by default.")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentinstruct-gates-") as folder:
        root = Path(folder)
        data = yaml.safe_load((profiles_dir() / "standin.yaml").read_text())
        data["name"] = "gates"
        data["llm"]["standin"] = {**data["llm"].get("standin", {}), "junk": options.junk, "judge": options.judge}
        data["storage"] = {"root": str(root / "lake"), "inbox": str(root / "inbox")}
        (root / "profiles").mkdir()
        (root / "profiles" / "gates.yaml").write_text(yaml.safe_dump(data))
        shutil.copytree(sample_documents_dir(), root / "inbox" / BATCH)
        env = {
            **os.environ,
            "AGENTINSTRUCT_PROFILES_DIR": str(root / "profiles"),
            "AGENTINSTRUCT_PROFILE": "gates",
            "DAGSTER_HOME": str(root / "home"),
        }
        command = [str(Path(sys.executable).parent / "agentinstruct"), "backfill", "--in-process", "--batch", BATCH]
        command += [argument for name in options.skill for argument in ("--skill", name)]
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
