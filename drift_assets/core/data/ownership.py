"""Which warehouse a Dagster instance keeps the history of.

Staleness is read from the instance's materializations: an instance whose history belongs to
another warehouse would call a table up to date that this warehouse never got (or got with other
settings). So a warehouse has an identity, written into it the first time (an id and the root it
was written at), and an instance records the one warehouse it serves. A run on another warehouse is
refused. A copy of a warehouse (or one moved elsewhere) is told apart by its root: it gets an id of
its own, and the instance that came with it follows it; a warehouse deleted and created again at
the root the instance records is the same warehouse to it (the tables its history names are
missing, and are rebuilt).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    id: str
    root: str


@dataclass(frozen=True)
class Verdict:
    """What to write before the run goes on: ``warehouse``, a new identity for the warehouse, and
    ``instance``, the identity the instance is to record (None: nothing to write). ``refusal``: why
    the run may not go on (then nothing is written)."""

    warehouse: Identity | None = None
    instance: Identity | None = None
    refusal: str | None = None


def _fresh(root: str) -> Verdict:
    identity = Identity(uuid.uuid4().hex, root)
    return Verdict(warehouse=identity, instance=identity)


def claim(recorded: Identity | None, found: Identity | None, root: str, instance: str) -> Verdict:
    """What to do for a run on the warehouse at ``root`` (whose identity is ``found``, None where it has
    none yet), with an instance (described by ``instance``) that records ``recorded``."""
    copied = found is not None and found.root != root  # or moved: an identity written at another root
    if recorded is None:  # a new instance (or one from before identities): it takes this warehouse
        return _fresh(root) if found is None or copied else Verdict(instance=found)
    if found is not None and found.id == recorded.id:  # the instance's own warehouse, or a copy made with it
        if copied:
            return _fresh(root)
        return Verdict(instance=found) if recorded.root != root else Verdict()
    if recorded.root == root:  # deleted and created again where the instance's warehouse was
        return _fresh(root) if found is None or copied else Verdict(instance=found)
    return Verdict(
        refusal=f"the Dagster instance {instance} keeps the history of the warehouse {recorded.root}, not of "
        f"{root}: staleness would be read from the other warehouse's materializations. Point DAGSTER_HOME at a "
        "directory of its own for each warehouse"
    )
