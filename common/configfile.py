"""Typed configurations from a YAML file and ``key=value`` overrides, with every problem reported at once.

A configuration is a tree of dataclasses (the schema). :func:`load_structured` reads the YAML file strictly
(syntax errors, duplicate keys and a top level that is not a mapping are errors with their line), then merges
each value onto the schema's defaults one key at a time, so that one bad value does not hide the next: an unknown
key (with the closest known one), a section given a scalar, a value of the wrong type. :func:`number_problems`
checks the numbers of a built configuration generically: each must be finite and non-negative, named keys
strictly positive or below one. Each problem names its key (``optim.lr=-1: must be > 0``).

Bounded: a file over :data:`MAX_FILE_BYTES`, a value over :data:`MAX_VALUE_ITEMS` items (YAML aliases can
multiply a small file into a huge structure) and nesting deeper than :data:`MAX_DEPTH` are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.errors import ConfigError

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_VALUE_ITEMS", "config_differences", "field_problems", "load_structured",
           "number_problems", "read_yaml_mapping", "saved_config_changes"]

MAX_FILE_BYTES = 1 << 20
MAX_VALUE_ITEMS = 10_000
MAX_DEPTH = 16
_KEY = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate and non-string mapping keys, and reads booleans and exponent
    numbers as YAML 1.2 does: only ``true``/``false`` (also ``True``, ``TRUE``, ...) are booleans, so
    ``mixed_precision: no`` is the string ``no``, not false; ``1e-3`` is a number, not a string."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"  # no config value is a date: 2026-01-01 stays a string
_BOOL_WORDS = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_BOOL_TAG, _BOOL_WORDS, list("tTfF"))
_StrictLoader.add_implicit_resolver(  # YAML 1.1 wants a dot in a float: 1e-3 would be a string
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    first: dict[object, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is not a name", key_node.start_mark)
        if key in first:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {first[key]})", key_node.start_mark)
        first[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """The top-level mapping of a YAML file (``{}`` for an empty file), or a :class:`ConfigError` naming
    ``path[:line]`` and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: config file is larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = " ".join(f"{err.context or ''} {err.problem or ''}".split()) or "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split()) or type(err).__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (section: ...), not a "
                          f"{type(data).__name__}")
    return data


def _leaves(data: dict, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, object]]:
    """``(dotted key, value)`` of every non-mapping value of a nested mapping."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{prefix.rstrip('.')}: nested deeper than {MAX_DEPTH} levels")
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.", depth + 1)
        else:
            yield f"{prefix}{key}", value


def _items(value: object, budget: int = MAX_VALUE_ITEMS, depth: int = 0) -> int:
    """How many items ``value`` holds (nested, aliases counted each time), stopping once over ``budget``."""
    if depth > MAX_DEPTH:
        return budget + 1
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if not isinstance(value, (list, tuple)):
        return 1
    count = 1
    for item in value:
        count += _items(item, budget - count, depth + 1)
        if count > budget:
            break
    return count


def _field_types(schema: type) -> dict[str, object]:
    return typing.get_type_hints(schema)


def _unwrap_optional(tp: object) -> object:
    """``Optional[X]`` -> ``X``; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _schema_problem(schema: type, key: str, value: object) -> str | None:
    """A problem with ``key=value`` that the schema alone shows (unknown key, wrong kind of value), or ``None``."""
    node: object = schema
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _field_types(node) if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            section = ".".join(parts[:i]) or "the top level"
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f"; did you mean {'.'.join([*parts[:i], close[0]])}?" if close else ""
            return f"{key}: unknown key in {section}{hint}"
        node = _unwrap_optional(fields[part])
    shown = _shown(value)
    if dataclasses.is_dataclass(node):
        if value == {} or value is None:
            return None
        return f"{key}={shown}: expected a mapping of {node.__name__} keys"
    if node is bool and not isinstance(value, bool):
        return f"{key}={shown}: must be true or false"
    if node in (int, float) and isinstance(value, bool):
        return f"{key}={shown}: must be a number, not true/false"
    if _items(value) > MAX_VALUE_ITEMS:
        return f"{key}: the value has more than {MAX_VALUE_ITEMS} items"
    return None


def _shown(value: object, width: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _nested(key: str, value: object) -> dict:
    out: dict = {}
    node = out
    *heads, last = key.split(".")
    for part in heads:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def _merge_problem(key: str, value: object, err: Exception) -> str:
    text = str(err).split("\n")[0]
    text = re.sub(r"^Value '.*' of type '.*?' ", "", text)  # the value is shown already (or '$VALUE' unfilled)
    return f"{key}={_shown(value)}: {text}"


def _override_leaves(overrides: Sequence[str], problems: list[str]) -> list[tuple[str, object]]:
    """``key=value`` strings as leaves, each value read as YAML by the loader of config files (so
    ``mixed_precision=no`` is the string ``no`` there as here, and ``ssl={adaptive: false}`` sets a section)."""
    leaves = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not _KEY.fullmatch(key.strip()):
            problems.append(f"override {_shown(text)}: expected key=value with a dotted key such as optim.lr=0.01")
            continue
        try:
            value = yaml.load(raw, Loader=_StrictLoader) if raw.strip() else None  # noqa: S506 (SafeLoader)
            leaves.extend(_leaves(_nested(key.strip(), value)))
        except (yaml.YAMLError, ValueError, RecursionError) as err:
            problems.append(f"override {_shown(text)}: {' '.join(str(err).split()[:30])}")
    return leaves


def load_structured(schema: type, path: str | os.PathLike | None = None,
                    overrides: Sequence[str] = ()) -> tuple[object, list[str]]:
    """Defaults of the dataclass ``schema`` ← the YAML file ← ``key=value`` overrides.

    Returns the built configuration and the problems found while reading and merging (empty when all is
    well); each problem names the file or override and the key. A value with a problem is skipped, so the
    configuration is still complete and its other values can be checked.
    """
    problems: list[str] = []
    layers: list[tuple[str, list[tuple[str, object]]]] = []
    if path is not None:
        layers.append((f"{path}: ", list(_leaves(read_yaml_mapping(path)))))
    if overrides:
        layers.append(("", _override_leaves(overrides, problems)))
    merged = OmegaConf.structured(schema)
    for where, leaves in layers:
        for key, value in leaves:
            problem = _schema_problem(schema, key, value)
            if problem is None:
                try:
                    merged = OmegaConf.merge(merged, OmegaConf.create(_nested(key, value)))
                except (OmegaConfBaseException, ValueError, TypeError, RecursionError) as err:
                    problem = _merge_problem(key, value, err)
            if problem is not None:
                problems.append(where + problem)
    return OmegaConf.to_object(merged), problems


def _numbers(obj: object, prefix: str = "") -> Iterator[tuple[str, str, float]]:
    """``(key, key with index, value)`` of every int/float in a dataclass tree (tuple items included)."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, key + ".")
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    yield key, f"{key}[{i}]", item
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, key, value


def number_problems(cfg: object, *, positive: Collection[str] = (), below_one: Collection[str] = (),
                    signed: Collection[str] = ()) -> list[str]:
    """Generic checks of every number of a dataclass configuration: finite, and ``>= 0`` unless its key is in
    ``signed``; ``> 0`` for keys in ``positive``; ``< 1`` for keys in ``below_one`` (keys are dotted,
    ``optim.lr``; a tuple's items share its key)."""
    problems = []
    for key, shown, value in _numbers(cfg):
        if not math.isfinite(value):
            problems.append(f"{shown}={value}: must be a finite number")
        elif key in positive and value <= 0:
            problems.append(f"{shown}={value}: must be > 0")
        elif key not in signed and value < 0:
            problems.append(f"{shown}={value}: must be >= 0")
        elif key in below_one and value >= 1:
            problems.append(f"{shown}={value}: must be < 1")
    return problems


def _type_problem(tp: object, value: object) -> str | None:
    """Why ``value`` (parsed JSON) is not of the annotated type ``tp``, or ``None``."""
    optional = _unwrap_optional(tp)
    if optional is not tp:
        return None if value is None else _type_problem(optional, value)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if origin is tuple and Ellipsis not in typing.get_args(tp) and len(value) != len(args):
            return f"must be a list of {len(args)} items"
        return next((f"item {i} {p}" for i, item in enumerate(value)
                     if args and (p := _type_problem(args[min(i, len(args) - 1)], item))), None)
    if tp is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if tp is int:
        return None if type(value) is int else "must be an integer"
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a finite number"
    if tp is str:
        return None if isinstance(value, str) else "must be a string"
    return None


def field_problems(schema: type, values: Mapping, *, limits: Mapping[str, float] | None = None) -> list[str]:
    """Problems of ``values`` (read from a JSON file) meant for the dataclass ``schema``, before it is built: each
    field present must have its annotated type (``int`` an integer, not true/false; ``float`` a finite number;
    ``Optional[X]`` null or X; ``tuple[X, ...]`` a list of X), and a number named in ``limits`` must lie in
    ``(0, limit]``, so that a damaged file cannot make the reader allocate without bound."""
    problems = []
    hints = _field_types(schema)
    for f in dataclasses.fields(schema):
        if f.name not in values:
            continue
        value = values[f.name]
        problem = _type_problem(hints[f.name], value)
        if problem is None and limits and f.name in limits and value is not None:
            if not 0 < value <= limits[f.name]:
                problem = f"must be in (0, {limits[f.name]:g}]"
        if problem is not None:
            problems.append(f"{f.name}={_shown(value)}: {problem}")
    return problems


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``key: saved -> current`` for every leaf that differs between two config trees (plain dicts)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, name + "."))
        elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def saved_config_changes(path: Path, load: Callable[[Path], dict], current: dict,
                         free: Collection[str] = ()) -> list[str]:
    """:func:`config_differences` between the config a run saved at ``path`` and ``current``, except the keys in
    ``free`` (a leaf, or a whole section by its name). ``load`` reads the file into the dict form of ``current``, so
    keys added to the schema since the file was written take their defaults, as the run did; a file it refuses (a
    key since removed or renamed) is compared as it is."""
    try:
        saved = load(path)
    except ConfigError:
        saved = OmegaConf.to_container(OmegaConf.load(path))
    return without_keys(config_differences(saved, current), free)


def without_keys(differences: list[str], keys: Collection[str]) -> list[str]:
    """The :func:`config_differences` lines that are not about ``keys`` (a leaf, or a whole section by its name)."""
    return [d for d in differences if not any(d.split(":")[0] == k or d.startswith(k + ".") for k in keys)]
