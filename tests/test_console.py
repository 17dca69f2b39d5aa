"""The terminal stays quiet: libraries that turn logging up on import are turned down again."""

from __future__ import annotations

import logging


def test_importing_ray_serve_llm_leaves_no_library_info_on_the_terminal():
    import ray.serve.llm  # noqa: F401  (on import: the root logger to INFO with a JSON console handler)

    from raystep.console import quiet_libraries

    quiet_libraries()
    for name in ("", "httpx", "ray.serve", "ray.serve.ray.llm._internal.serve.core.server.builder"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name or "root"
