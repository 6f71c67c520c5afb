"""The small machinery shared by every exercise check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one exercise check; ``bool(result)`` is whether the answer was right."""

    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "✅ correct" if self.passed else "❌ not yet"
        return f"{mark} ({self.name}): {self.message}"


def check(name: str, test: Callable[[], str | None], hint: str, quiet: bool = False) -> CheckResult:
    """Run ``test``; it returns None when the answer is right, or a sentence saying what is off.

    Any exception raised by the student's code counts as a wrong answer and is reported.
    """
    try:
        problem = test()
    except Exception as error:  # the student's code may fail in any way; report it, do not crash
        problem = f"your code raised {type(error).__name__}: {error}"
    if problem is None:
        result = CheckResult(name, True, "well done!")
    else:
        result = CheckResult(name, False, f"{problem}. Hint: {hint}")
    if not quiet:
        print(result)
    return result
