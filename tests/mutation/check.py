"""Compare mutmut's surviving mutants with the accepted ones (``survivors.txt``).

Run by ``make mutation`` in the scratch copy after ``mutmut run``: prints the score (killed /
survived / timeout / no tests) and exits 1 when a mutant survives that is not listed with its
reason, or when a listed survivor no longer survives (the list must stay true).

Each line of ``survivors.txt``: ``<mutant name>  # <why no test can or should kill it>``.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

ACCEPTED = Path(__file__).with_name("survivors.txt")
KILLED = {"killed", "caught by type check"}


def results(mutmut: str) -> dict[str, str]:
    """Every mutant's status, from ``mutmut results --all true``."""
    out = subprocess.run(
        [mutmut, "results", "--all", "true"], check=True, capture_output=True, text=True
    ).stdout
    statuses = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            statuses[name] = status
    return statuses


def accepted() -> dict[str, str]:
    reasons = {}
    for line in ACCEPTED.read_text(encoding="utf-8").splitlines():
        name, _, reason = line.partition("#")
        if name.strip():
            reasons[name.strip()] = reason.strip()
    return reasons


def main() -> int:
    # A partial run (`make mutation MUTANTS=...`) leaves the others "not checked": not judged.
    statuses = {
        name: status
        for name, status in results(sys.argv[1] if len(sys.argv) > 1 else "mutmut").items()
        if status != "not checked"
    }
    counts = collections.Counter(
        "killed" if s in KILLED else s.replace("no tests", "no_tests") for s in statuses.values()
    )
    named = ("killed", "survived", "timeout", "no_tests")
    other = sum(v for k, v in counts.items() if k not in named)
    print(
        f"mutants {len(statuses)}: killed {counts['killed']}, survived {counts['survived']}, "
        f"timeout {counts['timeout']}, no tests {counts['no_tests']}, other {other}"
    )
    survived = {n for n, s in statuses.items() if s in {"survived", "no tests"}}
    allowed = accepted()
    unlisted = sorted(survived - allowed.keys())
    stale = sorted((allowed.keys() & statuses.keys()) - survived)
    for name in unlisted:
        print(f"SURVIVED, not accepted: {name}   (mutmut show {name})")
    for name in stale:
        print(f"listed in survivors.txt but killed now: {name}")
    return 1 if unlisted or stale else 0


if __name__ == "__main__":
    sys.exit(main())
