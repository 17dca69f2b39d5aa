"""The terminal stays quiet: libraries that turn logging up on import are turned down again."""

from __future__ import annotations

import logging


def test_importing_ray_serve_llm_leaves_no_library_info_on_the_terminal():
    import ray.serve.llm  # noqa: F401  (on import: the root logger to INFO with a JSON console handler)

    from raystep.console import quiet_libraries

    quiet_libraries()
    for name in ("", "httpx", "ray.serve", "ray.serve.ray.llm._internal.serve.core.server.builder"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name or "root"


def test_ray_datas_underused_actor_pool_warning_is_not_printed():
    """A one-block evaluation on a fixed pool of two actors makes Ray Data warn; nothing a user can act on."""
    import warnings

    from raystep.console import quiet_libraries

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn(
            "The minimum number of concurrent actors for 'MapBatches(EndpointUDF)' is set to 2",
            UserWarning,
            stacklevel=2,
        )
        warnings.warn("another warning", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["another warning"]
