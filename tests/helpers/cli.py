"""Assertions on what a kotune command printed."""

from __future__ import annotations


def one_error_line(res, *needles: str) -> None:
    """Bad input: exit code 2 and exactly one non-blank stderr line, ``error: ...``,
    containing every needle (no traceback)."""
    assert res.code == 2, (res.code, res.err)
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.err
    assert "Traceback" not in res.err
    for n in needles:
        assert n in lines[0], lines[0]
