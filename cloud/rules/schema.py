"""Which fields a message document can have, so that a rule naming a field that cannot exist is
refused when it is compiled rather than silently matching nothing for ever.

A :class:`FieldSchema` maps each top-level field name to a *kind*:

    scalar     a string, number, boolean or null: it has no fields
    map        any keys, every value of one nested kind (``counts``: map of map of scalar)
    object     fixed nested fields, each of its own kind (``totals``: ballots, counts)
    array      items of one nested kind (what ``keys()`` and ``values()`` return)
    any        not checked: anything may be below it (for fields whose shape is open)

Kinds are built with ``FieldSchema.scalar()``, ``.map(kind)``, ``.object({...})``,
``.array(kind)`` and ``.any()``; in ``FieldSchema({...})`` and ``.object({...})`` a kind may
also be written ``"scalar"``, ``"any"`` or a plain dict (an object).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Union


@dataclass(frozen=True, slots=True)
class ScalarKind:
    def __str__(self) -> str:
        return "scalar"


@dataclass(frozen=True, slots=True)
class AnyKind:
    def __str__(self) -> str:
        return "any"


@dataclass(frozen=True, slots=True)
class MapKind:
    values: Kind

    def __str__(self) -> str:
        return f"map of {self.values}"


@dataclass(frozen=True, slots=True)
class ArrayKind:
    items: Kind

    def __str__(self) -> str:
        return f"array of {self.items}"


@dataclass(frozen=True, slots=True)
class ObjectKind:
    fields: Mapping[str, Kind]

    def __str__(self) -> str:
        return f"object ({', '.join(self.fields)})"

    def __hash__(self) -> int:
        return hash(tuple(self.fields.items()))


Kind = Union[ScalarKind, AnyKind, MapKind, ArrayKind, ObjectKind]  # noqa: UP007 (a runtime alias)
KindSpec = Union[Kind, Literal["scalar", "any"], Mapping[str, "KindSpec"]]  # noqa: UP007

SCALAR = ScalarKind()
ANY = AnyKind()


def as_kind(spec: KindSpec) -> Kind:
    """A kind from its spelling: a kind object, ``"scalar"``, ``"any"`` or a dict (object)."""
    if isinstance(spec, ScalarKind | AnyKind | MapKind | ArrayKind | ObjectKind):
        return spec
    if spec == "scalar":
        return SCALAR
    if spec == "any":
        return ANY
    if isinstance(spec, Mapping):
        return ObjectKind(MappingProxyType({str(k): as_kind(v) for k, v in spec.items()}))
    raise ValueError(f"not a field kind: {spec!r} (scalar, any, map, object, array)")


class FieldSchema:
    """The top-level fields of the documents a rule will see, each with its kind."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, KindSpec]) -> None:
        self._fields: Mapping[str, Kind] = MappingProxyType(
            {str(name): as_kind(spec) for name, spec in fields.items()}
        )

    # --- kind constructors ----------------------------------------------------------------
    @staticmethod
    def scalar() -> Kind:
        return SCALAR

    @staticmethod
    def any() -> Kind:
        return ANY

    @staticmethod
    def map(values: KindSpec) -> Kind:
        return MapKind(as_kind(values))

    @staticmethod
    def array(items: KindSpec) -> Kind:
        return ArrayKind(as_kind(items))

    @staticmethod
    def object(fields: Mapping[str, KindSpec]) -> Kind:
        return as_kind(fields)

    # --- schemas --------------------------------------------------------------------------
    @classmethod
    def batch(cls) -> FieldSchema:
        """The document the engine builds from a verified batch: the body's fields
        (docs/protocol.md section 3) plus the envelope's ``kid`` and the body's hash."""
        counts = cls.map(cls.map("scalar"))
        return cls(
            {
                "v": "scalar",
                "election": "scalar",
                "device": "scalar",
                "precinct": "scalar",
                "seq": "scalar",
                "prev": "scalar",
                "issued_at": "scalar",
                "ballots": "scalar",
                "counts": counts,
                "final": "scalar",
                "totals": {"ballots": "scalar", "counts": counts},
                "kid": "scalar",
                "body_hash": "scalar",
            }
        )

    def with_fields(self, fields: Mapping[str, KindSpec]) -> FieldSchema:
        """This schema plus (or with new kinds for) ``fields``: what the engine adds."""
        return FieldSchema({**self._fields, **fields})

    @property
    def fields(self) -> Mapping[str, Kind]:
        return self._fields

    def get(self, name: str) -> Kind | None:
        return self._fields.get(name)

    def __contains__(self, name: builtins.object) -> bool:
        return name in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: builtins.object) -> bool:
        return isinstance(other, FieldSchema) and dict(self._fields) == dict(other._fields)

    def __hash__(self) -> int:
        return hash(tuple(self._fields.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}: {kind}" for name, kind in self._fields.items())
        return f"FieldSchema({inner})"
