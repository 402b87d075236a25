"""The member actor as the explorer runs it, and the defects it can inject.

:class:`ExplorerMember` is the real :class:`~trio_gm.ring.member.MemberActor`
with two observation hooks and nothing else changed: it tells the harness
when it starts handling a ring message (so the harness knows what is still
waiting in its mailbox) and when it handles a ``Down`` (so the harness can
check that the left's ``Down`` never overtakes the left's last message).

The injected defects are subclasses of it, each a small, deliberate break
of one rule the ring relies on; the explorer must catch every one of them.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from ...actor import Down
from ...ring.member import MemberActor
from ...ring.messages import Activity, Catchup


class Observer(Protocol):
    """What an :class:`ExplorerMember` reports to its harness."""

    def on_ring_message(self, member: ExplorerMember, msg: Any) -> None: ...

    def on_down(self, member: ExplorerMember, down: Down) -> None: ...


class ExplorerMember(MemberActor):
    """A real member that reports what it handles to the harness."""

    observer: Observer
    label: str

    async def handle_cast(self, msg: Any) -> Any:
        self.observer.on_ring_message(self, msg)
        return await super().handle_cast(msg)

    async def handle_info(self, msg: Any) -> Any:
        if type(msg) is Down:
            self.observer.on_down(self, msg)
        return await super().handle_info(msg)


class SkipCatchupAfterDeath(ExplorerMember):
    """Defect: every catch-up after the first is ignored.

    After a death (or a join) the new left's catch-up is what tells a member
    the publications and acknowledgements lost with the dead link.
    """

    async def _on_catchup(self, msg: Catchup) -> None:
        if self.members_state is not None:
            return
        await super()._on_catchup(msg)


class AcksBeforePubs(ExplorerMember):
    """Defect: forwarded publications wait; the next activity overtakes them.

    An activity carrying other members' publications is held back and sent
    only after the next activity (typically acknowledgements), so the right
    sees acknowledgements before the publications they acknowledge.
    """

    _held: Activity | None = None

    def _send_right(self, msg: Activity | Catchup) -> None:
        if type(msg) is not Activity:
            super()._send_right(msg)
            return
        held = self._held
        if held is None and any(e.pubs and e.publisher != self.self_id for e in msg.entries):
            self._held = msg
            return
        self._held = None
        super()._send_right(msg)
        if held is not None:
            super()._send_right(held)


class LeftDownOvertakes(ExplorerMember):
    """Defect: every ``Down`` after the first catch-up gets priority 1.

    The RabbitMQ 3.3.2 bug: the left's ``Down`` then overtakes the left's
    last activity, which arrives from a member no longer the left and is
    discarded.
    """

    def prioritise_info(self, msg: Any) -> int:
        if type(msg) is Down and self.members_state is not None:
            return 1
        return super().prioritise_info(msg)


#: Injectable defects, by the name ``--inject-bug`` takes.
BUGS: Final[dict[str, type[ExplorerMember]]] = {
    "skip-catchup-after-death": SkipCatchupAfterDeath,
    "acks-before-pubs": AcksBeforePubs,
    "left-down-overtakes": LeftDownOvertakes,
}
