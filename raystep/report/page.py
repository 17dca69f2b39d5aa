"""Write ``index.html`` (CSS, script and section data inlined) and the pair data beside it.

Data reaches the page as JavaScript, never through ``fetch``: browsers refuse ``fetch`` of
``file://`` URLs, but load ``<script src>`` from the page's own folder, on disk or from a bucket.
Every chunk file is ``RS_CHUNK("<name>", <json>);``. JSON put inside the page escapes ``<``, ``>``
and ``&`` so no text can close the script element it travels in; the page script then builds every
element with ``textContent``, so model and user texts are only ever shown as text. A
Content-Security-Policy allows only this page's own inline scripts (by hash) and script files from its
own origin (``'self'``; ``file:`` for browsers that give a page opened from disk no origin): even a text
that slipped through as markup could not run a handler or an inline script.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from raystep.report.pairs import PairTables

DATA_DIR = "data"


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (a diverged loss must not break the page's JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def js_json(value: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``</script>``, no HTML comment or CDATA openers."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or infinity somewhere: only then pay for the walk
        text = json.dumps(finite(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def chunk_js(name: str, value: Any) -> str:
    return f'RS_CHUNK("{name}",{js_json(value)});\n'


def asset(name: str) -> str:
    return resources.files("raystep.report").joinpath("assets", name).read_text(encoding="utf-8")


def _sha256(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode() + "'"


BOOT = (
    "window.RS_CHUNKS={};window.RS_WAIT={};"
    "window.RS_CHUNK=function(n,d){RS_CHUNKS[n]=d;var w=RS_WAIT[n];delete RS_WAIT[n];"
    "if(w){w.forEach(function(f){f(d);});}};"
)
"""Defines ``RS_CHUNK`` before any data script runs; the page script waits on ``RS_WAIT``."""


def write_page(out: Path, payload: dict[str, Any], tables: PairTables, inline_max_bytes: int) -> list[Path]:
    """Write the page into ``out`` (a fresh folder); return the files written."""
    out.mkdir(parents=True)
    chunks: dict[str, str] = {"pairs-index": chunk_js("pairs-index", tables.index)}
    for i, rows in enumerate(tables.previews):
        chunks[f"pv-{i:05d}"] = chunk_js(f"pv-{i:05d}", rows)
    for i, detail in enumerate(tables.details):
        chunks[f"pd-{i:05d}"] = chunk_js(f"pd-{i:05d}", detail)
    inline = sum(len(c) for c in chunks.values()) <= inline_max_bytes
    payload = {**payload, "data_dir": DATA_DIR, "inline": inline}

    inline_scripts = [BOOT, f"window.RS_DATA={js_json(payload)};"]
    files: list[Path] = []
    external: list[str] = []
    if inline:
        inline_scripts += list(chunks.values())
    else:
        data = out / DATA_DIR
        data.mkdir()
        for name, text in chunks.items():
            path = data / f"{name}.js"
            path.write_text(text, encoding="utf-8")
            files.append(path)
        external.append(f"{DATA_DIR}/pairs-index.js")
    app = asset("report.js")
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'self' file: {' '.join(_sha256(s) for s in [*inline_scripts, app])}"
    )
    title = f"raystep report: {payload['run']['name']}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_escape(title)}</title>",
        f"<style>{asset('report.css')}</style>",
        "</head><body>",
        '<div id="app"><header id="top"></header><nav id="tabs"></nav>'
        '<div id="warnings"></div><main id="main"><p class="muted">Loading the report…</p></main></div>',
        *(f"<script>{s}</script>" for s in inline_scripts),
        *(f'<script src="{src}"></script>' for src in external),
        f"<script>{app}</script>",
        "</body></html>",
    ]
    index = out / "index.html"
    index.write_text("\n".join(parts) + "\n", encoding="utf-8")
    files.append(index)
    return files


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
