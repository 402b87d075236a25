"""How a ring is written into the ``members`` JSON column and read back.

The encoding is plain JSON made by cattrs from the attrs classes, one object
per ring position, in ring order::

    [{"id": {"node": "n1", "serial": 3}, "dead": false}, ...]

Reading is strict: a wrong type or an unknown key is an error rather than a
silent coercion (cattrs' default would turn ``1`` into ``"1"``), so what
comes back is exactly what was written, or the row is reported as malformed.
"""

from __future__ import annotations

from typing import Any

import cattrs

from .model import GroupMember

__all__ = ["converter", "members_from_json", "members_to_json"]


def _strict(kind: type[Any]) -> Any:
    def structure(value: object, _type: object) -> object:
        # bool is a subclass of int: a JSON ``true`` is not a serial number.
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, found {type(value).__name__}: {value!r}")
        return value

    return structure


#: The converter for everything the store writes as JSON.
converter = cattrs.Converter(forbid_extra_keys=True)
for _kind in (str, int, bool):
    converter.register_structure_hook(_kind, _strict(_kind))


def members_to_json(members: tuple[GroupMember, ...]) -> list[dict[str, Any]]:
    """The JSON value of a ring."""
    encoded: list[dict[str, Any]] = converter.unstructure(members, tuple[GroupMember, ...])
    return list(encoded)


def members_from_json(value: object) -> tuple[GroupMember, ...]:
    """The ring a JSON value encodes; raises ``cattrs`` errors if malformed."""
    if not isinstance(value, list):
        raise TypeError(f"expected a JSON array of members, found {type(value).__name__}")
    return converter.structure(value, tuple[GroupMember, ...])
