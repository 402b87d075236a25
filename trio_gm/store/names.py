"""Which group names a store can hold: the one check, shared by every entry point.

A group name is the primary key of ``gm_group``. Some strings cannot be a
key on every backend, and each backend fails differently on them (or not
at all), so the rules are the union of what any backend refuses, checked
before anything reaches a database:

- a ``str``, not empty;
- valid Unicode text: no lone surrogates (``"\\ud800"``; what Python makes
  of undecodable bytes in ``sys.argv`` or a file name). No driver can
  encode them, and the error would be a ``UnicodeEncodeError`` from deep
  inside the driver;
- no NUL character: PostgreSQL's text types cannot hold it (SQLite can, so
  without this check a name would work on one backend and not the other);
- at most :data:`MAX_GROUP_NAME_LENGTH` characters, the length of the
  ``name`` column. PostgreSQL cannot index a key of more than about 2700
  bytes, which a few hundred CJK characters exceed; 255 characters are at
  most 1020 bytes of UTF-8, well inside that on every backend.

Anything else (spaces, control characters, any script) is stored and read
back exactly.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_GROUP_NAME_LENGTH", "check_group_name"]

#: The longest group name, in characters (code points): the ``name`` column's length.
MAX_GROUP_NAME_LENGTH: Final = 255

#: How much of a bad name an error message shows.
_SHOWN: Final = 40


def check_group_name(name: object) -> str:
    """``name`` if every store can hold it as a group name; else ``ValueError`` saying why."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"group name must be a non-empty str, got {_show(name)}")
    if len(name) > MAX_GROUP_NAME_LENGTH:
        raise ValueError(
            f"group name {_show(name)} is {len(name)} characters long: "
            f"at most {MAX_GROUP_NAME_LENGTH} fit the store's name column"
        )
    nul = name.find("\x00")
    if nul >= 0:
        raise ValueError(
            f"group name {_show(name)} contains a NUL character (at index {nul}), "
            "which PostgreSQL cannot store"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"group name {_show(name)} contains a lone surrogate {name[exc.start]!r} "
            f"(at index {exc.start}): it is not valid Unicode text, which no store can hold"
        ) from None
    return name


def _show(name: object) -> str:
    """``repr(name)``, cut short for a long one."""
    if isinstance(name, str) and len(name) > _SHOWN:
        return f"{name[:_SHOWN]!r}..."
    return repr(name)
