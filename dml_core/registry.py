"""Registries of losses and miners: register where you define, list what exists.

Each :class:`Entry` declares its parameters as a pydantic model (defaults, ranges, help), the
paper it comes from and its equation in LaTeX. The CLI lists them, and the app builds its
widgets from them, so a newly registered loss appears everywhere with no UI change.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict

from dml_core.errors import ConfigError, validate

T = TypeVar("T")
Kind = Literal["pairs", "triplets", "classes"]
KINDS: tuple[str, ...] = get_args(Kind)


class Params(BaseModel):
    """Base of every parameter model, of losses and miners: immutable, unknown names an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NoParams(Params):
    """The parameters of a loss or miner that has none."""


@dataclass(frozen=True)
class Entry:
    """One registered loss or miner.

    Attributes:
        name: registry key, the paper's name in snake_case (``"triplet"``).
        build: the class; called with the validated parameters as keyword arguments.
        params: pydantic model of the parameters (defaults, limits, descriptions).
        paper: short citation, e.g. ``"Schroff et al., FaceNet, CVPR 2015"``.
        equation: the defining formula in LaTeX.
        kind: what it consumes or produces: ``"pairs"``, ``"triplets"`` or ``"classes"``
            (class-level losses, which compare samples with one weight per class).

    Raises:
        ValueError: ``kind`` is none of those three.
    """

    name: str
    build: Callable[..., Any]
    params: type[BaseModel]
    paper: str
    equation: str
    kind: Kind

    def __post_init__(self) -> None:
        """Check ``kind`` (a typo would silently change how the app draws the entry)."""
        if self.kind not in KINDS:
            allowed = ", ".join(f"'{k}'" for k in KINDS)
            raise ValueError(
                f"The 'kind' of {self.name} must be one of {allowed}. Got {self.kind!r}."
            )

    @property
    def doc(self) -> str:
        """The class docstring (what the app shows)."""
        return inspect.getdoc(self.build) or ""

    @property
    def summary(self) -> str:
        """First line of the docstring."""
        return self.doc.split("\n", 1)[0]

    def validate(self, **values: Any) -> BaseModel:
        """Check parameter values; raises ConfigError naming the field and its range."""
        return validate(self.params, values, self.name)

    def defaults(self) -> dict[str, Any]:
        """The default value of every parameter."""
        return self.params().model_dump()

    def create(self, context: Mapping[str, Any] | None = None, /, **values: Any) -> Any:
        """Validate the parameters and build the object.

        Args:
            context: facts about the run that some entries need besides their parameters
                (``num_classes``, ``embedding_dim`` for proxy losses); each is passed only if
                the class's constructor takes a keyword of that name.
            **values: the parameters, checked against ``params``.
        """
        accepted = inspect.signature(self.build).parameters
        extra = {k: v for k, v in (context or {}).items() if k in accepted}
        return self.build(**self.validate(**values).model_dump(), **extra)


class Registry(Mapping[str, Entry]):
    """A read-only mapping name -> Entry that refuses duplicate names."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry] = {}

    def register(
        self, *, name: str, params: type[BaseModel], paper: str, equation: str, kind: Kind
    ) -> Callable[[T], T]:
        """Class decorator adding an entry under ``name``.

        Raises:
            ValueError: ``name`` is taken, or ``kind`` is not one of ``KINDS``.
        """

        def decorator(cls: T) -> T:
            if name in self._entries:
                raise ValueError(f"A {self.what} named '{name}' is already registered.")
            self._entries[name] = Entry(name, cls, params, paper, equation, kind)  # type: ignore[arg-type]
            return cls

        return decorator

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries)
            raise ConfigError(
                f"Unknown {self.what} '{name}'. Known {self.what} names: {known}."
            ) from None

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered (``Mapping``'s default would raise ConfigError)."""
        return isinstance(name, str) and name in self._entries

    def get(self, name: str, default: Any = None) -> Any:
        """The entry ``name``, or ``default`` when there is none (no ConfigError)."""
        return self._entries.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, name: str, context: Mapping[str, Any] | None = None, /, **params: Any) -> Any:
        """Build the registered object ``name`` with validated parameters (see Entry.create)."""
        return self[name].create(context, **params)


LOSSES = Registry("loss")
MINERS = Registry("miner")
