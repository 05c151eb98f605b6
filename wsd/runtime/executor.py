"""Calling compiled Relax functions from Python on one device."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


class Executor:
    """A Relax VM on one device. `executor(name, *args)` runs the compiled function `name`;
    numpy arguments are uploaded first, device tensors are passed as they are."""

    def __init__(self, library, device: tvm.runtime.Device):
        self.device = device
        self.vm = relax.VirtualMachine(library, device)

    def upload(self, array: np.ndarray) -> tvm.runtime.Tensor:
        return tvm.runtime.tensor(np.ascontiguousarray(array), self.device)

    def __call__(self, name: str, *args):
        args = [self.upload(a) if isinstance(a, np.ndarray) else a for a in args]
        return self.vm[name](*args)

    def has(self, name: str) -> bool:
        return self.vm.module.implements_function(name)
