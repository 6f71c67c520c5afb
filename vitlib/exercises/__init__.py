"""Check functions for the exercises at the end of each notebook.

Each chapter has its own module (``from vitlib.exercises import ch01``). A check runs the
student's answer on fresh inputs, prints whether it is right, and gives a hint when it is not.
"""

from .checking import CheckResult, check

__all__ = ["CheckResult", "check"]
