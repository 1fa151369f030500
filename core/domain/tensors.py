"""``TensorData``: a small, immutable, numpy-backed tensor carried in requests and results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.errors import ValidationError

DType = Literal["int64", "float32"]
DTYPES: tuple[DType, ...] = ("int64", "float32")
# numpy dtype objects compare in nanoseconds; ``dtype.name`` costs microseconds (hot path).
_INT64, _FLOAT32 = np.dtype(np.int64), np.dtype(np.float32)


def _frozen_array(value: Any) -> npt.NDArray[Any]:
    array = np.array(_checked(value), copy=True)
    array.flags.writeable = False
    return array


def _checked(value: Any) -> npt.NDArray[Any]:
    if not isinstance(value, np.ndarray):
        raise ValidationError(
            "TensorData.data", f"expected a numpy array, got {type(value).__name__}"
        )
    if value.dtype not in (_INT64, _FLOAT32):
        raise ValidationError(
            "TensorData.data",
            f"dtype {value.dtype.name} is not supported; expected one of {', '.join(DTYPES)} "
            "(use TensorData.from_numpy to convert)",
        )
    return value


@attrs.frozen(eq=False)
class TensorData:
    """An int64 or float32 array of any shape; read-only, compared by dtype, shape and value."""

    data: npt.NDArray[Any] = attrs.field(converter=_frozen_array)

    @classmethod
    def from_numpy(cls, array: npt.ArrayLike) -> TensorData:
        """Convert integers to int64 and floats to float32 (the two dtypes requests carry)."""
        arr = np.asarray(array)
        if arr.dtype.kind in "iub":
            return cls(arr.astype(np.int64, copy=False))
        if arr.dtype.kind == "f":
            return cls(arr.astype(np.float32, copy=False))
        raise ValidationError("TensorData.data", f"cannot convert dtype {arr.dtype} to a tensor")

    @classmethod
    def from_list(cls, values: Sequence[Any], dtype: DType) -> TensorData:
        return cls(np.asarray(values, dtype=dtype))

    @property
    def dtype(self) -> DType:
        return "int64" if self.data.dtype == _INT64 else "float32"

    @property
    def shape(self) -> tuple[int, ...]:
        shape: tuple[int, ...] = self.data.shape
        return shape

    def __len__(self) -> int:
        return int(self.data.shape[0]) if self.data.ndim else 1

    def to_numpy(self) -> npt.NDArray[Any]:
        return self.data

    def tolist(self) -> list[Any]:
        result: list[Any] = self.data.tolist()
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorData):
            return NotImplemented
        return (
            self.data.dtype == other.data.dtype
            and self.data.shape == other.data.shape
            and bool(np.array_equal(self.data, other.data, equal_nan=self.dtype == "float32"))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"TensorData(dtype={self.dtype}, shape={self.shape}, data={self.data.tolist()!r:.60})"
        )
