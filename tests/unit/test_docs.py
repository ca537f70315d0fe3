"""The docs name files that exist: a module moved or renamed must take its mentions along."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("flatmath", "foundation", "landscape", "replicas", "coordinator", "cluster",
           "widevalley", "jobs", "benchmarks", "tests", "examples", "docker", "docs")  # fmt: skip
# A repository path: one of our folders, then a file with an extension we keep; not one
# inside another tree (a container's /home/ray/widevalley/jobs/…, an s3:// key).
MENTION = re.compile(rf"(?<![\w/.-])((?:{'|'.join(FOLDERS)})/[\w/.-]*\.(?:py|toml|sh|md|yaml))")
DOCS = sorted([*REPO.glob("docs/*.md"), REPO / "README.md", REPO / "tests" / "README.md"])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_file_a_doc_names_exists(doc: Path) -> None:
    missing = sorted({m for m in MENTION.findall(doc.read_text()) if not (REPO / m).exists()})
    assert missing == [], f"{doc.relative_to(REPO)} names files that do not exist: {missing}"
