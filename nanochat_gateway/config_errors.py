"""ConfigError and the readable problems it carries: one line per bad key, naming where it was
set (the file, an environment variable or an override), the key, what was expected and what came."""

import difflib
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

# A key's place in the settings, e.g. ("plugins", "rate_limit", "backend").
KeyPath = tuple[str, ...]


class ConfigError(Exception):
    """A problem with the settings; ``str()`` is fit to show a user as is, one line per problem."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    @classmethod
    def from_validation_error(
        cls,
        exc: ValidationError,
        model: type[BaseModel],
        *,
        source: str,
        prefix: KeyPath = (),
        raw: Mapping[str, Any] | None = None,
        sources: Mapping[KeyPath, str] | None = None,
    ) -> "ConfigError":
        """Turn a pydantic error for ``model`` into one readable line per offending key.

        ``prefix`` is where the model's table lives (e.g. ``("plugins", "rate_limit")``, so plugins can
        reuse this for their own tables), ``raw`` the data that was validated (to quote whole values),
        ``sources`` maps key paths to where they were set (an env variable name) when not ``source``.
        """
        return cls(validation_problems(exc, model, source=source, prefix=prefix, raw=raw, sources=sources))


def model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def resolve(model: type[BaseModel], loc: Sequence[Any]) -> tuple[KeyPath, FieldInfo | None, type[BaseModel]]:
    """Follow an error location through nested models to the key it is about.

    Returns the key path (union tags and list indexes below a field dropped), the field there (None
    for an unknown key, a free-form extra table or the root) and the model that owns the last key.
    """
    path: list[str] = []
    owner: type[BaseModel] = model
    field: FieldInfo | None = None
    for part in loc:
        if field is not None:
            sub_model = model_of(field.annotation)
            if sub_model is None:
                break
            owner = sub_model
        if not isinstance(part, str):
            break
        path.append(part)
        field = owner.model_fields.get(part)
        if field is None:
            break
    return tuple(path), field, owner


def validation_problems(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    source: str,
    prefix: KeyPath = (),
    raw: Mapping[str, Any] | None = None,
    sources: Mapping[KeyPath, str] | None = None,
) -> list[str]:
    # Group by key: a union or a list yields several errors for what the user sees as one bad value.
    groups: dict[KeyPath, list[dict[str, Any]]] = {}
    for error in exc.errors():
        path = resolve(model, error["loc"])[0]
        groups.setdefault(path, []).append(dict(error))
    problems = []
    for path, errors in groups.items():
        where = _source_of((*prefix, *path), sources or {}, source)
        problems.append(
            f"{where}: {_key_name((*prefix, *path))}: {_describe_problem(model, path, errors, raw)}"
        )
    return problems


def _describe_problem(
    model: type[BaseModel], path: KeyPath, errors: list[dict[str, Any]], raw: Mapping[str, Any] | None
) -> str:
    _, field, owner = resolve(model, path)
    first = errors[0]
    if first["type"] == "extra_forbidden":
        known = owner.model_fields
        if len(path) == 1 and isinstance(first["input"], dict):
            tables = ", ".join(f"[{name}]" for name in known)
            return f"unknown table{did_you_mean(path[-1], known)} (the tables are {tables})"
        return f"unknown key{did_you_mean(path[-1], known)}"
    value = _lookup(raw, path) if raw is not None else first["input"]
    details = [_error_detail(error) for error in errors]
    detail = "; ".join(dict.fromkeys(d for d in details if d))
    if field is not None:
        expected = _describe_field(field)
    elif path and owner.model_config.get("extra") == "allow":
        expected = f"a table of settings for {path[-1]!r}"
    else:
        return detail or first["msg"]
    message = f"expected {expected}, got {_show(value)}"
    return f"{message} ({detail})" if detail else message


def _error_detail(error: Mapping[str, Any]) -> str:
    if error["type"] in ("value_error", "assertion_error"):
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if error["type"] == "finite_number":
        return "must be finite"
    return ""


def _lookup(raw: Mapping[str, Any], path: KeyPath) -> Any:
    value: Any = raw
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def key_problem(path: KeyPath, sources: Mapping[KeyPath, str], default: str, message: str) -> str:
    """One problem line for the key at ``path``: where it was set, its name, then ``message``."""
    return f"{_source_of(path, sources, default)}: {_key_name(path)}: {message}"


def _source_of(path: KeyPath, sources: Mapping[KeyPath, str], default: str) -> str:
    for length in range(len(path), 0, -1):
        if path[:length] in sources:
            return sources[path[:length]]
    return default


def _key_name(path: KeyPath) -> str:
    if not path:
        return "settings"
    if len(path) == 1:
        return f"[{path[0]}]"
    return f"[{'.'.join(path[:-1])}] {path[-1]}"


def did_you_mean(name: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe_field(field: FieldInfo) -> str:
    expected = _describe_type(field.annotation)
    bounds = _describe_bounds(field.metadata)
    return f"{expected} {bounds}" if bounds else expected


def _describe_type(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        choices = ", ".join(repr(arg) for arg in args)
        return choices if len(args) == 1 else f"one of {choices}"
    if origin in (Union, types.UnionType):
        # None cannot be written in TOML, so an optional key is described by its other type.
        return " or ".join(_describe_type(arg) for arg in args if arg is not type(None))
    if origin is list:
        return f"a list of {_plural(args[0]) if args else 'values'}"
    if origin is dict or annotation is dict or model_of(annotation):
        return "a table"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _plural(annotation: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(annotation, "values")


def _describe_bounds(metadata: Sequence[Any]) -> str:
    bounds: dict[str, Any] = {}
    for item in metadata:
        for name in ("ge", "gt", "le", "lt"):
            if getattr(item, name, None) is not None:
                bounds[name] = getattr(item, name)
    if "ge" in bounds and "le" in bounds:
        return f"from {bounds['ge']} to {bounds['le']}"
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{symbols[name]} {value}" for name, value in bounds.items())
