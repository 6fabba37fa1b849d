"""An int8 copy of a published model, for actors that trade a little accuracy for speed.

onnxruntime's static quantization (QDQ: 7-bit int8 weights per output channel, uint8 activations)
runs the convolutions as integer kernels, which on CPUs with VNNI are several times faster
than float32 for the small nets self-play uses, and on CPUs without it (AVX2 only) about half
as fast. So the copy is timed against the float32 model at load, in alternation on the same
positions, and kept only where it is faster (`int8_speedup`, `MIN_SPEEDUP`).
`benchmarks/actor_bench.py --try int8=true` measures the gain and
`benchmarks/actor_strength.py --new int8=true` what it costs in play.

The activation ranges are calibrated on the game's own positions (random legal ones, fixed
seed), so the same model always quantizes to the same bytes and the actor needs nothing
beyond the file it already reads. The published file is never changed: each process makes
its copy in memory when it loads a new model.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trainer.games import Game
from trainer.model.contract import INPUT_NAME

# Positions whose activations set the int8 ranges, and how many go through at once. Enough
# random boards to reach late-game patterns; few enough that a reload costs well under a
# second next to the minutes between publications.
CALIBRATION_POSITIONS = 256
CALIBRATION_BATCH = 32

# The copy replaces the float32 model only if it evaluates at least this many times as fast;
# the margin keeps a tie measured on a busy core from swapping in the less exact model.
MIN_SPEEDUP = 1.1
# Alternating rounds of the speed trial and runs per model in each: a few tenths of a second
# per load, long enough for a steady ratio.
SPEED_ROUNDS = 3
SPEED_RUNS = 5

# Marks the copy in its metadata, beside the published model's own keys.
INT8_METADATA_KEY = "quantized"


def quantize_int8(model: bytes, game: Game) -> bytes:
    """The int8 (QDQ) version of the ONNX `model`, with the same inputs, outputs and metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    original = onnx.load_from_string(model)
    rng = np.random.default_rng(0)
    obs = np.stack([game.encode(s) for s in game.random_positions(CALIBRATION_POSITIONS, rng)])
    batches = iter(
        [{INPUT_NAME: obs[i : i + CALIBRATION_BATCH]} for i in range(0, len(obs), CALIBRATION_BATCH)]
    )

    class Positions(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    with tempfile.TemporaryDirectory(prefix="int8-") as tmp, _quiet_quantizer():
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            original,
            out,
            Positions(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # 7-bit weights: without VNNI the uint8 x int8 products are summed in pairs into
            # saturating int16 (VPMADDUBSW), which at full range clips the value head's sums.
            reduce_range=True,
        )
        quantized = onnx.load(out)
    # The quantizer keeps only its own metadata; the contract's keys (env_id, step) must stay.
    del quantized.metadata_props[:]
    for prop in original.metadata_props:
        quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(key=INT8_METADATA_KEY, value="int8")
    return quantized.SerializeToString()


def int8_speedup(float_session, int8_session, feeds: dict[str, np.ndarray]) -> float:
    """How many times as fast `int8_session` evaluates `feeds` as `float_session`.

    The two run in alternating rounds and each keeps its best round, so a core that another
    process shares slows both alike instead of biasing the ratio."""
    sessions = (float_session, int8_session)
    for session in sessions:
        session.run(None, feeds)  # first runs allocate; not part of the speed
    best = [float("inf")] * len(sessions)
    for _ in range(SPEED_ROUNDS):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            for _ in range(SPEED_RUNS):
                session.run(None, feeds)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0] / max(best[1], 1e-9)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop the quantizer's advice (logged on the root logger on every call) below errors."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    root = logging.getLogger()
    # `logging.warning` would also give a process without logging set up a stderr handler.
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if placeholder is not None:
            root.removeHandler(placeholder)
