"""The one table gm needs, as SQLAlchemy Core declares it.

``gm_group`` is gm.erl's Mnesia table of the same name: one row per group,
holding the view version and the ring (``members``, JSON written by
:mod:`trio_gm.store.codec`). Every membership change rewrites one row, which
is what lets a SERIALIZABLE transaction put all changes to a group in one
total order.

The table is declared once, at module level, without a schema; a store
opened with ``schema=`` reaches its own copy through SQLAlchemy's
``schema_translate_map`` rather than by copying the table.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Integer, MetaData, String, Table

from .names import MAX_GROUP_NAME_LENGTH

__all__ = ["gm_group", "metadata", "table_definitions"]

#: Constraint names follow this convention so that migrations written later
#: can refer to them by name on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

gm_group = Table(
    "gm_group",
    metadata,
    # A key PostgreSQL can index (see trio_gm.store.names); SQLite ignores the length.
    Column("name", String(MAX_GROUP_NAME_LENGTH), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("members", JSON, nullable=False),
)


def table_definitions() -> tuple[Table, ...]:
    """Every table the store uses (for an application that manages its own DDL)."""
    return tuple(metadata.sorted_tables)
