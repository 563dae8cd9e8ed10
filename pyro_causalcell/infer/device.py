"""Device choice and placement of data on the device."""

from __future__ import annotations

import os

import torch

from ..data import CellData


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine."""


#: environment variable naming the device ``"auto"`` stands for (e.g. ``cuda:1``)
DEVICE_VARIABLE = "CAUSALCELL_DEVICE"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> the device named by ``$CAUSALCELL_DEVICE`` if set, else CUDA when
    available, else CPU; otherwise ``torch.device(device)``."""
    if isinstance(device, str) and device == "auto":
        chosen = os.environ.get(DEVICE_VARIABLE, "").strip()
        if chosen and chosen != "auto":
            return resolve_device(chosen)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceUnavailableError(f"device={device!r} is not a device torch knows; use "
                                     "'auto', 'cpu' or 'cuda' (or 'cuda:1', ...).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device={str(device)!r} was requested but CUDA is not "
                                     "available; use device='cpu' or device='auto'.")
    return device


def place_data(data: CellData, device: torch.device, max_fraction: float = 0.5) -> CellData:
    """Move ``data`` to ``device`` when its tensors take at most ``max_fraction`` of free memory.

    Minibatches are then gathered on the device with no host-device copies. Data that does not
    fit stays where it is and each minibatch is copied over.
    """
    if data.device == device or getattr(data.counts, "on_disk", False):
        return data  # counts on disk are read on the host, one minibatch at a time
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if data.counts.nbytes > max_fraction * free:
            return data
    return data.to(device)
