"""``check_device``: one place that turns a device name into a clear error before any work.

Without it a typo (``--device banana``), an accelerator this build of PyTorch lacks (``cuda`` on a
CPU-only wheel, ``mps`` off macOS) or a GPU index past the last one surfaces as an assertion or a
``RuntimeError`` deep inside ``Tensor.to`` after minutes of loading. Every entry point that takes a
device (``arvision.load``, ``load_model``, the trainers, every CLI command with ``--device``)
calls :func:`check_device` first.
"""

from __future__ import annotations

import torch

from arvision.errors import DeviceError

_EXAMPLES = "cpu, cuda, cuda:N (N-th GPU) or mps"


def available_devices() -> list[str]:
    """Device names usable on this machine, for error messages (``["cpu", "cuda:0", ...]``)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        names += [f"xpu:{i}" for i in range(xpu.device_count())]
    return names


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or a :class:`DeviceError` that says what is available.

    Refused: names PyTorch does not know (``tpu``, ``banana``), ``meta`` (it holds no data),
    back ends this PyTorch build or machine lacks, and indices past the last device.
    """
    if not isinstance(device, (str, torch.device)):
        raise DeviceError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    have = ", ".join(available_devices())
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise DeviceError(f"'{device}' is not a device name ({_EXAMPLES}); available here: {have}") from e
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise DeviceError(f"'{device}': there is one CPU device, 'cpu'")
        return dev
    if dev.type == "meta":
        raise DeviceError(f"device '{device}' holds no data and cannot run a model; available here: {have}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU or driver is visible"
            raise DeviceError(f"device '{device}' is not available: {why}; use --device cpu (available here: {have})")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device '{device}' does not exist: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device '{device}' is not available: MPS needs Apple silicon and a PyTorch built with it; "
                              f"available here: {have}")  # fmt: skip
        return dev
    backend = getattr(torch, dev.type, None)  # xpu, hpu, mtia... expose is_available() / device_count()
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise DeviceError(f"device '{device}' is not available on this machine (no {dev.type} back end); available here: {have}")
    if dev.index is not None and hasattr(backend, "device_count") and dev.index >= backend.device_count():
        raise DeviceError(f"device '{device}' does not exist: this machine has {backend.device_count()} {dev.type} device(s)")
    return dev


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())
