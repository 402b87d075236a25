"""The gm tests take the store's state as given between ring messages.

An activity checks the stored ring at most every
``MEMBERSHIP_CHECK_INTERVAL`` seconds, in a worker thread; a test that waits
for every task to block (``wait_all_tasks_blocked``) would otherwise catch a
member in the middle of that read. The check itself is tested with the
interval set to 0.
"""

from __future__ import annotations

import pytest

from trio_gm.ring import core


@pytest.fixture(autouse=True)
def no_periodic_membership_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MEMBERSHIP_CHECK_INTERVAL", 3600.0)
