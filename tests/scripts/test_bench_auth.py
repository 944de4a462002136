"""scripts/bench.py --auth-only on a few rounds: the tenant token and the plain key are both
measured, through authenticate() and a whole request, and the figure is printed against its
target. No timing is asserted (the numbers are the benchmark's business); that each figure is
measured, and that the requests it times succeeded (the script asserts each is a 200), is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
NUMBER = r"[-+]?\d+\.\d{3}"


def test_auth_only_measures_the_token_against_its_key() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--auth-only", "--auth-repeat", "30"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "tenant token vs plain key, sqlite, p50 of 30 alternating rounds" in out, out
    for label in ("authenticate() alone", "GET /api/personas/{id} via ASGI"):
        row = next(line for line in out.splitlines() if line.startswith(label))
        assert len(re.findall(NUMBER, row)) == 3, row  # key, token, added
    verdict = re.search(rf"added to a request .*: ({NUMBER}) ms, target <= \+0\.2 ms: (\w+)", out)
    assert verdict, out
    assert verdict.group(2) == ("pass" if float(verdict.group(1)) <= 0.2 else "MISSED")


def test_auth_repeat_must_be_positive() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--auth-only", "--auth-repeat", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "--auth-repeat must be at least 1" in done.stderr
