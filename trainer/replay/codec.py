"""Blob encodings of the replay contract: float32 LE vectors and u32 LE actions."""

from __future__ import annotations

import numpy as np

F32 = np.dtype("<f4")
U32 = np.dtype("<u4")


class BlobError(ValueError):
    """A blob that does not decode to what the contract says; the row is skipped."""


def encode_f32(values) -> bytes:
    return np.asarray(values, dtype=F32).tobytes()


def decode_f32(blob: bytes | None, expected_len: int, field: str) -> np.ndarray:
    if blob is None:
        raise BlobError(f"{field} is NULL")
    if len(blob) != 4 * expected_len:
        raise BlobError(f"{field} has {len(blob)} bytes, expected {4 * expected_len}")
    arr = np.frombuffer(blob, dtype=F32)
    if not np.isfinite(arr).all():
        raise BlobError(f"{field} has non-finite values")
    return arr


def encode_action(action: int) -> bytes:
    return np.asarray([action], dtype=U32).tobytes()


def decode_action(blob: bytes | None, num_actions: int) -> int:
    if blob is None or len(blob) != 4:
        raise BlobError(f"action blob has {0 if blob is None else len(blob)} bytes, expected 4")
    action = int(np.frombuffer(blob, dtype=U32)[0])
    if action >= num_actions:
        raise BlobError(f"action {action} out of range [0, {num_actions})")
    return action
