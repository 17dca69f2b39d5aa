"""The run report: one offline HTML page over a run folder (``raystep report RUN``).

``load`` reads the run folder (read only), ``pairs`` and ``sections`` turn it into the page's data,
``page`` writes ``index.html`` with its CSS and script inlined and the pair chunks beside it, and
``build`` ties them together; ``refresh_report(run_dir)`` is what a finishing stage calls. Nothing
here imports the command line or a stage's runner.
"""

from __future__ import annotations

from raystep.report.build import ReportResult, build_report, refresh_report

__all__ = ["ReportResult", "build_report", "refresh_report"]
