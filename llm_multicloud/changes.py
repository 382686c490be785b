"""Which endpoint states changed since a reader last looked: the log the router's
index follows, so that a plan re-reads only the endpoints whose health moved.

Writers append the changed object to :data:`ENTRIES` (an ``EndpointState`` does it
for every write of a field the router reads, see ``health.EndpointState.__setattr__``;
a ``QuotaDomain`` when it cools down: its endpoints changed). A credential becoming
unavailable (shared by endpoints the log does not know) or a log that grew past
:data:`LIMIT` bumps :data:`EPOCH` instead: every reader then rebuilds from scratch. Readers remember
``(epoch, position)``; both only grow within an epoch. No imports: the auth, health
and router layers all write or read it.
"""

from __future__ import annotations

#: Entries kept before the log is reset (readers then rebuild once).
LIMIT = 65536

#: The objects changed since the last reset, oldest first (cleared in place).
ENTRIES: list[object] = []

#: ``EPOCH[0]`` grows on every reset; a reader holding an older epoch starts over.
EPOCH: list[int] = [0]


def everything_changed() -> None:
    """Tell every reader to start over (bumped before the log is cleared, so that a
    reader that slices the emptied log also sees the new epoch)."""
    EPOCH[0] += 1
    del ENTRIES[:]
