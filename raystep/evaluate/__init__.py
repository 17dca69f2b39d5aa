"""Evaluation of any OpenAI-compatible endpoint on GSM8K / MATH500 / MATH, and paired comparisons.

- ``client``: one request with bounded concurrency and retries (``openai.AsyncOpenAI``).
- ``samples``: the resumable per-sample answer log.
- ``benchmark``: plan, send, grade and report one benchmark.
- ``ray_data``: the same requests through Ray Data's HTTP processor (cluster scale).
- ``report`` / ``stats``: summary.json, report.md, plots; Wilson, McNemar, maj@k, pass@k.
- ``compare``: ``raystep compare A B``.
- ``run``: the ``raystep eval`` command and the stage entry ``run(config)``.
"""
