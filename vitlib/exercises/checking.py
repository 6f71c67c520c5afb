"""The small machinery shared by every exercise check."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from unittest import mock


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


def _qualified_name(owner: object, name: str) -> str:
    return f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"


@contextmanager
def forbidden(what: str, *targets: tuple[object, str]) -> Iterator[None]:
    """While the block runs, calling any of the ``(owner, attribute name)`` targets (for example
    ``(torch.nn.functional, "softmax")``) raises a RuntimeError that names the function and
    says ``what`` the exercise asks for instead; everything is restored afterwards.

    A call through a reference taken before the block (``from torch.nn.functional import
    softmax``, or the function itself given as the answer) is not stopped but seen: the
    RuntimeError then comes when the block ends."""
    originals = {_qualified_name(owner, name): getattr(owner, name) for owner, name in targets}
    by_code = {function.__code__: qualified for qualified, function in originals.items()
               if hasattr(function, "__code__")}
    called: list[str] = []

    def message(qualified: str) -> str:
        return f"{qualified} is not allowed in this exercise; {what}"

    def refusal(qualified: str) -> Callable[..., None]:
        def refuse(*args, **kwargs) -> None:
            raise RuntimeError(message(qualified))

        return refuse

    def watch(frame, event: str, arg: object) -> None:
        if event == "call" and frame.f_code in by_code:  # a Python function
            called.append(by_code[frame.f_code])
        elif event == "c_call":  # a builtin one
            called.extend(q for q, function in originals.items() if arg is function)

    previous = sys.getprofile()
    with ExitStack() as stack:
        for owner, name in targets:
            stack.enter_context(
                mock.patch.object(owner, name, refusal(_qualified_name(owner, name))))
        sys.setprofile(watch)
        try:
            yield
        finally:
            sys.setprofile(previous)
    if called:
        raise RuntimeError(message(called[0]))


@contextmanager
def counted(*names: str) -> Iterator[list[str]]:
    """While the block runs, note the name of every call to a builtin function or method called
    one of ``names`` (for example ``"randint"`` and ``"random_"``: ``torch.randint`` and
    ``Tensor.random_``) from Python code, under whatever name it was imported; the list fills up
    as the calls come. Like ``forbidden``, it takes the place of a profiler that is running."""
    seen: list[str] = []

    def watch(frame, event: str, arg: object) -> None:
        if event == "c_call" and getattr(arg, "__name__", None) in names:
            seen.append(arg.__name__)

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        yield seen
    finally:
        sys.setprofile(previous)
