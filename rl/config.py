"""Configuration dataclasses from files and the command line.

Every entry point has a frozen dataclass of settings whose docstring lists
each field under ``Attributes:``. :func:`parse` builds one from

* ``--config FILE`` (JSON, or YAML when PyYAML is installed), then
* ``key=value`` overrides, with dots into nested dataclasses
  (``algorithm.tau=0.05``, ``task.prompts=512``); a nested dataclass with a
  ``name`` field takes a bare string as its name (``algorithm=grpo``);
* ``--name`` and ``--no-name`` for a boolean field of the top level, the
  same as ``name=true`` and ``name=false`` (``--resume``; dashes or
  underscores in the name),

applied in order (a later one wins), converting each value to the field's
type (``none`` for optional fields) and failing with a message that names
the field; an unknown ``--flag`` is an error naming it. ``--help`` prints every
field with its type, default and description.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["describe", "flags", "parse", "to_dict", "update"]


def _field_docs(cls) -> dict[str, str]:
    """``name: text`` entries of the ``Attributes:`` section of a dataclass docstring."""
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    docs: dict[str, str] = {}
    current = None
    for line in doc.split("Attributes:", 1)[1].splitlines():
        m = re.match(r"^\s{4,8}([\w, ]+):\s*(.*)$", line)
        if m and not line.startswith(" " * 12):
            names = [n.strip() for n in m.group(1).split(",")]
            for name in names:
                docs[name] = m.group(2).strip()
            current = names
        elif current and line.strip():
            for name in current:
                docs[name] += " " + line.strip()
    return docs


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, name: str) -> Any:
    """Convert a string (or a parsed JSON/YAML value) to the field's type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if len(args) < len(typing.get_args(hint)):
                return None
            raise ValueError(f"{name} cannot be none")
        return _convert(value, args[0], name)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return update(hint(), value, prefix=f"{name}.")
        raise ValueError(f"{name} must be a mapping of its fields, got {value!r}")
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin in (tuple, list):
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
            inner = typing.get_args(hint)[0] if typing.get_args(hint) else str
            return origin(_convert(v, inner, name) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


def update(config, values: dict, prefix: str = ""):
    """A copy of the dataclass ``config`` with ``values`` (nested dicts or dotted keys) applied."""
    hints = _hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    nested: dict[str, dict] = {}
    direct: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ValueError(f"unknown setting {prefix + head!r}; see --help for the list")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif dataclasses.is_dataclass(hints[head]) and isinstance(value, dict):
            nested.setdefault(head, {}).update(value)
        elif dataclasses.is_dataclass(hints[head]) and isinstance(value, str) and _has_name(hints[head]):
            nested.setdefault(head, {})["name"] = value  # algorithm=grpo means algorithm.name=grpo
        else:
            direct[head] = _convert(value, hints[head], prefix + head)
    for head, sub in nested.items():
        direct[head] = update(getattr(config, head), sub, prefix=f"{prefix}{head}.")
    return dataclasses.replace(config, **direct)


def _has_name(cls) -> bool:
    return any(f.name == "name" for f in dataclasses.fields(cls))


def _load(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use JSON") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of settings")
    return data


def describe(cls, prefix: str = "") -> list[str]:
    """One line per field (nested dataclasses expanded): name, type, default, description."""
    lines = []
    docs = _field_docs(cls)
    hints = _hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            lines.append(f"  {prefix}{f.name}.*  {docs.get(f.name, '')}")
            lines.extend(describe(hint, prefix=f"{prefix}{f.name}."))
            continue
        tname = getattr(hint, "__name__", str(hint).replace("typing.", ""))
        value = getattr(default, f.name)
        lines.append(f"  {prefix}{f.name}={value!r} ({tname})  {docs.get(f.name, '')}".rstrip())
    return lines


def _is_bool(hint) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)] == [bool]
    return hint is bool


def flags(cls) -> list[str]:
    """The boolean fields of the top level of ``cls``: those ``--name`` and ``--no-name`` set."""
    hints = _hints(cls)
    return [f.name for f in dataclasses.fields(cls) if _is_bool(hints[f.name])]


def _flag(cls, arg: str) -> tuple[str, bool]:
    """``--name`` is ``(name, True)``, ``--no-name`` ``(name, False)``, for a boolean field of ``cls``."""
    text, equals, value = arg[2:].partition("=")
    name = text.replace("-", "_")
    hints, fields = _hints(cls), {f.name for f in dataclasses.fields(cls)}
    candidates = [(name, True)] + ([(name[3:], False)] if name.startswith("no_") else [])
    for field, setting in candidates:
        if field not in fields:
            continue
        if not _is_bool(hints[field]):
            tname = getattr(hints[field], "__name__", str(hints[field]).replace("typing.", ""))
            raise ValueError(
                f"--{text} is not a flag: {field} is a setting of type {tname}; write {field}=VALUE"
            )
        if equals:
            raise ValueError(f"{arg!r}: a flag takes no value; write --{text}, or {field}={value}")
        return field, setting
    known = ", ".join(f"--{n.replace('_', '-')}" for n in flags(cls)) or "none"
    raise ValueError(f"unknown flag {arg!r} (the flags are {known}; settings are key=value, see --help)")


def parse(cls, argv: list[str] | None = None, prog: str = ""):
    """Build ``cls`` from ``--config FILE``, ``--flag`` and ``key=value`` arguments (see ``--help``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        names = flags(cls)
        usage = f"usage: {prog} [--config FILE]" + (" [--FLAG ...]" if names else "") + " [key=value ...]"
        print(f"{usage}\n\n{summary}\n\nsettings (defaults shown):")
        print("\n".join(describe(cls)))
        if names:
            print("\nflags: --NAME is NAME=true, --no-NAME is NAME=false, for")
            print("  " + " ".join(f"--{n.replace('_', '-')}" for n in names))
        raise SystemExit(0)
    values: dict[str, Any] = {}
    it = iter(argv)
    for arg in it:
        if arg == "--config" or arg.startswith("--config="):
            path = next(it, None) if arg == "--config" else arg.split("=", 1)[1]
            if not path:
                raise ValueError("--config needs a file")
            values.update(_flatten(_load(path)))
        elif "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            values[key.strip()] = value
        elif arg.startswith("--") and len(arg) > 2:
            key, value = _flag(cls, arg)
            values[key] = value
        else:
            raise ValueError(f"unexpected argument {arg!r}: settings are key=value (see --help)")
    return update(cls(), values)


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_dict(config) -> dict:
    """The configuration as plain nested dicts (for logs, caches and checkpoints)."""
    return dataclasses.asdict(config)
