"""The preprocessing children's start-up imports: no circle, and no torch before the limits."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import internvl_queue.worker.threads as threads


def test_threads_imports_nothing_of_the_worker() -> None:
    tree = ast.parse(Path(threads.__file__).read_text())
    imported = [
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert imported == [], f"threads.py imports {imported}: the children's code depends on it"


def test_unpickling_the_pool_initializer_imports_no_torch() -> None:
    # What a spawned child does before its initializer runs: import the initializer's module.
    code = (
        "import sys; from internvl_queue.worker.preprocess_child import init_preprocess_child; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
