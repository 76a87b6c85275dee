"""The import graph (with the imports under TYPE_CHECKING) has no cycle: every module can be
read, tested and moved without the ones that import it. The layering contracts themselves
are import-linter's ([tool.importlinter], `make lint`)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.installed_tree import build

CYCLES = """
import grimp
g = grimp.build_graph("kfp_automl", cache_dir=None, exclude_type_checking_imports=False)
cycles = sorted(
    {tuple(sorted((a, b))) for a in g.modules for b in g.find_modules_directly_imported_by(a)
     if g.chain_exists(importer=b, imported=a)}
)
print("\\n".join(" <-> ".join(c) for c in cycles))
"""


def test_no_module_imports_one_that_imports_it(tmp_path):
    tree = build(tmp_path / "src")
    done = subprocess.run(
        [sys.executable, "-c", CYCLES],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"import cycles:\n{done.stdout}"
