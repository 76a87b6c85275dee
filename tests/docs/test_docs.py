"""The documentation: generated reference pages are fresh, the site builds, README links resolve."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_LIMIT = 15_000  # bytes: the README is the front page; the rest lives in docs/


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = _generator()


@pytest.mark.parametrize("name", sorted(GENERATE.PAGES))
def test_generated_page_is_fresh(name):
    path = GENERATE.REFERENCE / name
    rel = path.relative_to(ROOT)
    assert path.exists(), f"{rel} is missing: run `make docs`"
    fresh = GENERATE.PAGES[name]()
    assert path.read_text(encoding="utf-8") == fresh, f"{rel} is stale: run `make docs`"


def test_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's banner, not a problem
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").exists()


def _links(markdown: str) -> list[str]:
    """Targets of inline Markdown links and images, code blocks left out."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def test_readme_relative_links_point_to_files():
    links = _links(README.read_text(encoding="utf-8"))
    relative = [t for t in links if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t)]
    assert relative, "the README links to no docs page"
    missing = [t for t in relative if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_links_every_docs_page():
    linked = {t.split("#")[0] for t in _links(README.read_text(encoding="utf-8"))}
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert not pages - linked, f"README.md does not link {sorted(pages - linked)}"


def test_readme_is_a_short_front_page_that_starts_with_make_run_and_make_test():
    size = README.stat().st_size
    assert size < README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT}"
    first = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert first, "README.md has no bash block"
    assert "make run" in first.group(1) and "make test" in first.group(1), first.group(1)
