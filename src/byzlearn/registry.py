"""Name -> factory registries: every rule, attack, data set, model and optimiser is looked up here.

Adding a component is one function (or class) plus ``@REGISTRY.register("name")``. The registry
also checks the keyword arguments a config passes to a factory against its signature, so an
unknown or mistyped key fails before training with the list of allowed keys.
"""

from __future__ import annotations

import importlib
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, raised before any training starts. The message names the key and the fix."""


class Component:
    """Base of the configurable pieces a checkpoint saves (rules, pre-aggregators, attacks).

    Stateless by default; a stateful piece overrides both methods (tensors or plain values).
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    summary: str


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry(Generic[T]):
    """A named collection of factories of one kind (``kind`` is used in error messages).

    ``catalogue``: the module that imports every module registering entries here (rules and attacks:
    ``byzlearn.catalogue``). It is imported on the first look-up, so a name is found whichever
    module the caller imported first, and the modules that register never import upwards.
    """

    def __init__(self, kind: str, catalogue: str | None = None):
        self.kind = kind
        self.catalogue = catalogue
        self._entries: dict[str, Entry[T]] = {}

    def _complete(self) -> None:
        if self.catalogue is not None:
            name, self.catalogue = self.catalogue, None  # once; the catalogue's own imports may look up names
            importlib.import_module(name)

    def register(self, name: str, summary: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, factory, summary or _first_doc_line(factory))
            return factory

        return deco

    def names(self) -> list[str]:
        self._complete()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[k] for k in self.names()]

    def __contains__(self, name: str) -> bool:
        self._complete()
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        self._complete()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name].factory

    def parameters(self, name: str, skip: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
        """Keyword parameters a config may set for ``name`` (those in ``skip`` are filled by the engine)."""
        sig = inspect.signature(self.get(name))
        return {k: p for k, p in sig.parameters.items() if k not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def build(self, name: str, config: dict[str, Any], section: str, skip: tuple[str, ...] = (), **engine_args: Any) -> T:
        """Check the config keys against the factory's signature, then call it with them and ``engine_args``."""
        check_params(self, name, config, section, (*skip, *engine_args))
        try:
            return self.get(name)(**config, **engine_args)
        except (ValueError, OverflowError) as e:  # a value (or the data's shape) the factory refuses
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{self.kind} {name!r}: {e}; fix the {section}.* keys or choose another {section}.name") from e


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    if isinstance(annotation, str):  # unresolved forward reference: do not guess
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


INT64 = 2**63


def check_value(value: Any, key: str) -> None:
    """``ConfigError`` for a NaN anywhere in ``value`` (no setting takes one) or an integer beyond 64 bits."""
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{key} = nan is not a number any setting takes; give a number (byzlearn list shows the keys)")
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        raise ConfigError(f"{key} = {value} is beyond the 64-bit integer range [-2^63, 2^63); give a smaller integer")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_value(v, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_value(v, f"{key}.{k}")


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def check_params(registry: Registry[Any], name: str, params: dict[str, Any], section: str, skip: tuple[str, ...] = ()) -> None:
    allowed = registry.parameters(name, skip)
    factory = registry.get(name)
    try:  # a class's parameters are annotated on its __init__ (strings under postponed evaluation)
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # pragma: no cover - exotic annotations
        hints = {}
    for key, value in params.items():
        check_value(value, f"{section}.{key}")
        if key not in allowed:
            listing = ", ".join(f"{k} ({_type_name(hints.get(k, p.annotation))})" for k, p in allowed.items()) or "none"
            raise ConfigError(f"unknown key {section}.{key} for {registry.kind} {name!r}; allowed keys: {listing}")
        ann = hints.get(key, allowed[key].annotation)
        if not _type_ok(value, ann):
            raise ConfigError(f"{section}.{key} = {value!r} has the wrong type for {registry.kind} {name!r}: expected {_type_name(ann)}")
    missing = [k for k, p in allowed.items() if p.default is inspect.Parameter.empty and k not in params]
    if missing:
        raise ConfigError(f"{section} for {registry.kind} {name!r} needs the key(s): {', '.join(missing)}")
