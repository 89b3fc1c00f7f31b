"""One error type and one message format for every bad input.

The format follows scikit-learn's parameter validation:
``The 'margin' parameter of triplet must be in (0, 2]. Got -1.``
The CLI prints it and exits with status 2; the app shows it in a red box.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and what works."""


def field_bounds(model: type[BaseModel], name: str) -> dict[str, float]:
    """The numeric limits declared on a pydantic field, e.g. ``{"gt": 0, "le": 2}``."""
    bounds: dict[str, float] = {}
    for item in model.model_fields[name].metadata:
        for key in ("gt", "ge", "lt", "le"):
            if isinstance(item, getattr(at, key.capitalize())):
                bounds[key] = getattr(item, key)
    return bounds


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def allowed_values(model: type[BaseModel], name: str) -> str:
    """Human-readable description of what a field accepts: ``in (0, 2]`` or ``one of 'a', 'b'``."""
    annotation = model.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(annotation))
    if annotation is bool:
        return "true or false"
    bounds = field_bounds(model, name)
    if not bounds:
        return f"a valid {getattr(annotation, '__name__', annotation)}"
    low = bounds.get("gt", bounds.get("ge", -math.inf))
    high = bounds.get("lt", bounds.get("le", math.inf))
    left = "[" if "ge" in bounds else "("
    right = "]" if "le" in bounds else ")"
    return f"in {left}{_number(low)}, {_number(high)}{right}"


def describe_validation_error(err: ValidationError, model: type[BaseModel], owner: str) -> str:
    """Turn the first pydantic error into one sentence naming the field and its allowed values.

    Args:
        err: the error pydantic raised.
        model: the model that was validated (its fields declare the limits).
        owner: what the parameters belong to, e.g. ``"triplet"`` or ``"the run config"``.
    """
    first = err.errors()[0]
    loc = first["loc"]
    name = str(loc[0]) if loc else "?"
    got: Any = first.get("input")
    if first["type"] == "extra_forbidden":
        known = ", ".join(repr(f) for f in model.model_fields) or "none"
        return f"{owner} has no parameter '{name}'. Its parameters are: {known}."
    if name in model.model_fields and len(loc) == 1:
        return (
            f"The '{name}' parameter of {owner} must be {allowed_values(model, name)}. Got {got!r}."
        )
    return f"The '{'.'.join(map(str, loc))}' parameter of {owner} is invalid: {first['msg']}."


def validate(model: type[BaseModel], values: dict[str, Any], owner: str) -> Any:
    """Build ``model(**values)``, raising :class:`ConfigError` with a one-sentence message."""
    try:
        return model(**values)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, model, owner)) from None
