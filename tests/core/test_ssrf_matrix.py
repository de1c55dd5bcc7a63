"""The SSRF guard's answers from explicit tables: the same on every interpreter, never from
``ipaddress``'s ``is_global`` and friends (whose answers change between patch releases)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core.ssrf_matrix import (
    ACCEPTED,
    ROWS,
    ConsultedIpaddress,
    Row,
    ipaddress_classification_forbidden,
    mismatch,
)

REPO = Path(__file__).resolve().parents[2]
MATRIX = Path(__file__).with_name("ssrf_matrix.py")
# Debian's interpreter (3.11.2 on the development machine), whose ipaddress lists differ from the
# venv's (3.11.7): the matrix must pass on both.
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(autouse=True)
def no_classification_by_ipaddress() -> Iterator[None]:
    with ipaddress_classification_forbidden():
        yield


def test_the_classifying_properties_really_raise_meanwhile() -> None:
    with pytest.raises(ConsultedIpaddress):
        ipaddress.ip_address("8.8.8.8").is_global  # noqa: B018
    with pytest.raises(ConsultedIpaddress):
        ipaddress.ip_address("::ffff:0:7f00:1").is_private  # noqa: B018
    with pytest.raises(ConsultedIpaddress):
        ipaddress.ip_network("10.0.0.0/8").is_private  # noqa: B018


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_the_guard_answers_as_the_matrix_says(row: Row) -> None:
    assert mismatch(row) is None


def test_the_matrix_covers_both_answers_and_both_codes() -> None:
    outcomes = {row.outcome for row in ROWS}
    assert outcomes == {ACCEPTED, "webhook_url_not_allowed", "webhook_url_invalid"}


def _interpreters() -> list[str]:
    return [sys.executable, str(SYSTEM_PYTHON)]


@pytest.mark.parametrize("python", _interpreters(), ids=["this-python", "usr-bin-python3"])
def test_the_matrix_passes_as_a_script_under_each_interpreter(python: str) -> None:
    if not Path(python).exists():
        pytest.skip(f"{python} is not installed here")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [python, str(MATRIX)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(ROWS)} of {len(ROWS)} rows as expected" in run.stdout
