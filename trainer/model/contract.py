"""The model folder's contract (docs/contract.md section 3), declared once.

The exporter, the loader, the publisher, the actor and the evaluator all name the same
tensors and files; they import them from here. This module needs numpy only, because the
actor and the evaluator must load models without importing torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.games.base import GameSpec

INPUT_NAME = "observation"
OUTPUT_NAMES = ("policy_logits", "value")  # in this order
LATEST_MODEL_NAME = "latest.onnx"  # the file actors watch


class ModelContractError(ValueError):
    """The file is not a model an actor can use; the message says what is wrong."""


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of a model file (env_id, step, ...). Raises FileNotFoundError if it
    is missing and ModelContractError if it is not a readable ONNX model."""
    import onnx  # parses the file without torch or an inference session

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    try:
        proto = onnx.load_from_string(path.read_bytes())
    except Exception as e:
        raise ModelContractError(f"{path.name}: not a readable ONNX model: {e}") from e
    return {p.key: p.value for p in proto.metadata_props}


def sample_observations(spec: GameSpec, batch: int, seed: int = 0) -> np.ndarray:
    """Observations laid out like real ones (docs/contract.md section 2):
    non-overlapping 0/1 stones from a random number of alternating moves, a legal mask, a
    side-to-move one-hot. Works from the shapes alone, so also for a game whose rules we
    do not have."""
    rng = np.random.default_rng(seed)
    cells, a = spec.cells, spec.num_actions
    legal_slice = spec.legal_slice
    obs = np.zeros((batch, spec.obs_size), dtype=np.float32)
    for i in range(batch):
        moves = int(rng.integers(0, cells + 1))
        order = rng.permutation(cells)[:moves]
        obs[i, order[0::2]] = 1.0  # first player moved first
        obs[i, cells + order[1::2]] = 1.0
        empty = obs[i, :cells] + obs[i, cells : 2 * cells] == 0
        if a == cells:
            legal = empty
        else:  # e.g. connect4's per-column mask: any plausible pattern will do
            legal = rng.random(a) < 0.8
        obs[i, legal_slice] = legal
        side = moves % 2  # 0: first player to move
        if legal_slice.stop + 2 <= spec.obs_size:
            obs[i, legal_slice.stop + side] = 1.0
    return obs
