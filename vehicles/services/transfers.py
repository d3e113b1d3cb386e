"""Vehicle transfers: the one function that changes a transfer's status (see `TRANSFER_TRANSITIONS`)."""

from __future__ import annotations

from typing import Any

from core.states import transition_apply
from vehicles.models import TRANSFER_TRANSITIONS, VehicleTransfer


def vehicle_transfer_transition(*, transfer: VehicleTransfer, to: str, **changes: Any) -> bool:
    return transition_apply(transfer, table=TRANSFER_TRANSITIONS, to=to, changes=changes)
