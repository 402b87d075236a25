"""The group store: gm's ``gm_group`` table under SERIALIZABLE transactions.

See :mod:`trio_gm.store.store` for the theory of operation (why a total
order of membership changes, retries, what a cancelled caller can assume)
and :mod:`trio_gm.store.ops` for the membership changes themselves (one
class each, run by ``GroupStore.transact(name, op)``).
"""

from __future__ import annotations

from . import ops
from .codec import converter
from .model import Group, GroupMember, LostMembership
from .names import MAX_GROUP_NAME_LENGTH, check_group_name
from .ops import EraseMembers, PruneOrCreate, RecordDead, RecordNewMember, StoreOp
from .schema import gm_group, metadata, table_definitions
from .store import (
    DEFAULT_OUTAGE_TIMEOUT,
    DELETE,
    GroupStore,
    RetryPolicy,
    StoreStatistics,
    Write,
    open_store,
)

__all__ = [
    "DEFAULT_OUTAGE_TIMEOUT",
    "DELETE",
    "MAX_GROUP_NAME_LENGTH",
    "EraseMembers",
    "Group",
    "GroupMember",
    "GroupStore",
    "LostMembership",
    "PruneOrCreate",
    "RecordDead",
    "RecordNewMember",
    "RetryPolicy",
    "StoreOp",
    "StoreStatistics",
    "Write",
    "check_group_name",
    "converter",
    "gm_group",
    "metadata",
    "open_store",
    "ops",
    "table_definitions",
]
