"""DatasetStore: rows of training data, manipulated without materialising them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

# An adapter's own handle type (an Arrow table, a list, a remote cursor...); opaque to stages.
DatasetHandle = Any
Row = dict[str, Any]


@runtime_checkable
class DatasetStore(Protocol):
    """Every verb returns a new handle and leaves its argument unchanged. Handles of one store
    may be passed only to that store. Row order is deterministic for a given handle."""

    def load(self, source: str, split: str | None = None) -> DatasetHandle:
        """Open a dataset by name, path or URL (and optionally one split). Raises
        ``NotFoundError`` naming ``source`` when it does not exist."""
        ...

    def get_split(self, handle: DatasetHandle, split: str) -> DatasetHandle:
        """One split of a dataset; ``NotFoundError`` lists the splits that exist."""
        ...

    def splits(self, handle: DatasetHandle) -> list[str]:
        """Names of the splits of a dataset handle (as returned by ``load`` without a split)."""
        ...

    def num_rows(self, handle: DatasetHandle) -> int:
        """Rows in a split handle, without materialising them."""
        ...

    def shuffle(self, handle: DatasetHandle, seed: int) -> DatasetHandle:
        """A permutation of the rows that depends only on the rows and ``seed``."""
        ...

    def take(self, handle: DatasetHandle, n: int) -> DatasetHandle:
        """The first ``n`` rows (all of them when there are fewer)."""
        ...

    def skip(self, handle: DatasetHandle, n: int) -> DatasetHandle:
        """Every row after the first ``n`` (none when there are fewer)."""
        ...

    def select(self, handle: DatasetHandle, indices: Sequence[int]) -> DatasetHandle:
        """Rows at ``indices``, in that order; an index out of range raises."""
        ...

    def to_list(self, handle: DatasetHandle) -> list[Row]:
        """The rows as plain dicts (the only verb that materialises them)."""
        ...
