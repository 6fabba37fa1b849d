"""A training step's metrics, computed only when someone reads them.

Hooks read the metrics every N steps (stats.json, the log, TensorBoard), yet computing them
every step (means, entropies, accuracies, one `.item()` each) costs a small update as much
as a good part of its arithmetic, and on a GPU every `.item()` waits for the device. So a
step hands back the few figures it knows anyway (the loss and gradient norms the non-finite
guard checks) and a function for the rest, run at the first read of any other key, with
every value brought to the host in one transfer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping

import torch

Values = Mapping[str, "torch.Tensor | float"]


def as_floats(values: Values) -> dict[str, float]:
    """Python floats for a mix of floats and 0-d tensors, in one host transfer."""
    tensors = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor)}
    if tensors:
        flat = torch.stack([values[k].detach().reshape(()).float() for k in tensors]).tolist()
        out.update(zip(tensors, flat))
    return {k: out[k] for k in values}


class StepMetrics(MutableMapping[str, float]):
    """`known` floats now; `later()` (tensors or floats) at the first read of another key.

    A key set or known before `later` runs keeps its value: the eager figures and what the
    hooks add (the validation metrics) win over a recomputation.
    """

    def __init__(self, known: Mapping[str, float], later: Callable[[], Values] | None = None):
        self._values: dict[str, float] = dict(known)
        self._later = later

    def _resolve(self) -> None:
        if self._later is None:
            return
        later, self._later = self._later, None
        for k, v in as_floats(later()).items():
            self._values.setdefault(k, v)

    def __getitem__(self, key: str) -> float:
        if key not in self._values:
            self._resolve()
        return self._values[key]

    def __setitem__(self, key: str, value: float) -> None:
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        self._resolve()
        del self._values[key]

    def __iter__(self) -> Iterator[str]:
        self._resolve()
        return iter(self._values)

    def __len__(self) -> int:
        self._resolve()
        return len(self._values)

    def __repr__(self) -> str:
        return f"StepMetrics({dict(self)!r})"
