"""The config reference as Markdown, rendered from the pydantic fields themselves.

Each key's meaning is its attribute docstring in ``raystep/config.py`` (pydantic keeps it as the field's
description), so ``raystep config --reference`` and ``docs/config.md`` cannot drift from the code;
``tests/test_config.py`` checks that the committed page is current.
"""

from __future__ import annotations

import json
import re
import types
import typing

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from raystep.config import RunConfig

HEADER = (
    "# Config reference\n\n"
    "Generated from `raystep/config.py` by `raystep config --reference > docs/config.md`; do not edit.\n"
    "Every command takes `--config FILE` and `--set section.key=value`. Local paths are made absolute\n"
    "when the config loads (against the directory the command runs in); URIs are kept as they are.\n"
)


def _type_name(annotation: typing.Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" \\| null" if type(None) in args else "")
    if origin in (list, dict):
        inner = ", ".join(_type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "*(empty)*"
    return f"`{json.dumps(value, ensure_ascii=False)}`".replace("|", "\\|")


def _md(text: str | None) -> str:
    text = " ".join((text or "").split())
    return re.sub(r"``([^`]+)``", r"`\1`", text).replace("|", "\\|")


def _is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def _sections(model: type[BaseModel], prefix: str) -> list[str]:
    rows = [
        f"| `{prefix}{name}` | {_type_name(f.annotation)} | {_default(f)} | {_md(f.description)} |"
        for name, f in model.model_fields.items()
        if not _is_section(f)
    ]
    out: list[str] = []
    if rows:
        title = prefix.rstrip(".") or "top level"
        out += [f"## `{title}`", "", _md(model.__doc__), "", "| key | type | default | meaning |"]
        out += ["| --- | --- | --- | --- |", *rows, ""]
    for name, f in model.model_fields.items():
        if _is_section(f):
            out += _sections(f.annotation, f"{prefix}{name}.")  # type: ignore[arg-type]
    return out


def undocumented(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Keys with no docstring: each one is a gap in the reference."""
    missing = []
    for name, f in model.model_fields.items():
        if _is_section(f):
            missing += undocumented(f.annotation, f"{prefix}{name}.")  # type: ignore[arg-type]
        elif not f.description:
            missing.append(prefix + name)
    return missing


def render() -> str:
    """The whole reference page."""
    return "\n".join([HEADER, *_sections(RunConfig, "")]).rstrip() + "\n"
