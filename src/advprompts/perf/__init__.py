"""``advprompts benchmark``: the performance harness, measured speed and memory of the engine (issue 5).

See ``docs/performance.md`` for what each figure means and how it is measured.
"""

from advprompts.perf.runner import TARGETS, format_table, run_benchmark, table_rows
from advprompts.perf.suites import SUITES, Suite, get_suite

__all__ = ["SUITES", "Suite", "TARGETS", "format_table", "get_suite", "run_benchmark", "table_rows"]
