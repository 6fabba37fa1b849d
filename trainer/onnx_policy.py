"""Loading a published ONNX policy-value model (docs/contract.md section 3) with onnxruntime.

Used by the actor (hot reload of `latest.onnx`) and the evaluator. It never imports torch:
the daemon's eval hook calls the evaluator from a training thread, and a second torch import
path there would only cost memory and start-up time.

The contract is checked at load, so a bad file is refused with one message naming what is
wrong and the caller can keep its previous model:
  - one input `observation`, float32 [batch, obs_size];
  - outputs `policy_logits` float32 [batch, A], then `value` float32 [batch, 1];
  - a trial run on real positions (the game's initial position and random legal ones) gives
    those shapes and finite numbers: a model can be finite on an empty input and NaN on
    every board it will be asked about.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.games import KNOWN_ENV_IDS, GameSpec, get_game
from trainer.model.contract import INPUT_NAME, OUTPUT_NAMES, ModelContractError, sample_observations

# Positions in the trial run at load: enough random boards to reach mid- and late-game
# patterns, few enough that a reload stays instant.
TRIAL_POSITIONS = 8


def _static_dim(d) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


class OnnxPolicy:
    """A loaded model: `evaluate(obs, legal_masks) -> (priors, values)` on batches."""

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        expected_env_id: str | None = None,
        spec: GameSpec | None = None,
        int8: bool = False,
        int8_min_speedup: float | None = None,
    ):
        """`int8`: run an int8 copy (trainer/onnx_int8.py) instead, once the published
        model has passed the contract checks, if it is faster on this CPU (`int8_speedup`).
        A model that cannot be copied, or whose copy is not faster, stays float32 with the
        reason in `int8_error`: a long run keeps a working model either way.
        `int8_min_speedup` (default `onnx_int8.MIN_SPEEDUP`): 0 keeps any copy that loads."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {self.path} not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Fatal only: a failing run already raises with onnxruntime's message, and its own
        # log line of the same error would break our one-line errors.
        opts.log_severity_level = 4
        try:
            # Read the bytes ourselves: the publisher may replace the file right after we
            # stat it, and one read gives one consistent version.
            data = self.path.read_bytes()
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelContractError(f"{self.path.name}: onnxruntime cannot load it: {e}") from e

        meta = self.session.get_modelmeta().custom_metadata_map or {}
        self.metadata: dict[str, str] = dict(meta)
        self.env_id: str | None = meta.get("env_id") or None
        try:
            self.step: int | None = int(meta["step"]) if "step" in meta else None
        except ValueError:
            self.step = None
        if expected_env_id is not None and self.env_id is not None and self.env_id != expected_env_id:
            raise ModelContractError(
                f"{self.path.name}: model is for env_id {self.env_id!r}, expected {expected_env_id!r}"
            )
        self.obs_size, self.num_actions, obs_size_from = self._check_io(spec)
        trial = trial_observations(spec, self.env_id, self.obs_size, self.num_actions)
        self._trial_run(trial, obs_size_from)
        self.int8 = False
        self.int8_error: str | None = None
        self.int8_speedup: float | None = None
        if int8:
            self._use_int8_copy(data, spec, opts, trial, obs_size_from, int8_min_speedup)

    def _use_int8_copy(
        self, data: bytes, spec: GameSpec | None, opts, trial, obs_size_from, min_speedup: float | None
    ) -> None:
        import onnxruntime as ort

        from trainer import onnx_int8

        env_id = spec.env_id if spec is not None else self.env_id
        game = get_game(env_id) if env_id in KNOWN_ENV_IDS else None
        if game is None or (game.spec.obs_size, game.spec.num_actions) != (self.obs_size, self.num_actions):
            self.int8_error = (
                f"{self.path.name}: no int8 copy: it is calibrated on the game's positions, and "
                f"the model names no known game of its size (env_id {env_id!r})"
            )
            return
        float_session = self.session
        try:
            self.session = ort.InferenceSession(
                onnx_int8.quantize_int8(data, game), opts, providers=["CPUExecutionProvider"]
            )
            self._trial_run(trial, obs_size_from)
        except Exception as e:
            self.session = float_session
            self.int8_error = f"{self.path.name}: no int8 copy: {' '.join(str(e).split())}"
            return
        if min_speedup is None:
            min_speedup = onnx_int8.MIN_SPEEDUP
        self.int8_speedup = onnx_int8.int8_speedup(float_session, self.session, {INPUT_NAME: trial})
        if self.int8_speedup < min_speedup:
            self.session = float_session
            self.int8_error = (
                f"{self.path.name}: int8 copy not used: it runs at {self.int8_speedup:.2f}x the float32 "
                f"speed on this CPU (kept from {min_speedup:.2f}x; CPUs without VNNI are slower in int8)"
            )
            return
        self.int8 = True
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map or {})

    # --- contract checks -----------------------------------------------------------------
    def _check_io(self, spec: GameSpec | None) -> tuple[int, int, str | None]:
        """(obs_size, num_actions, where obs_size came from when the graph leaves it open)."""
        name = self.path.name
        ins = self.session.get_inputs()
        outs = self.session.get_outputs()
        if [i.name for i in ins] != [INPUT_NAME]:
            raise ModelContractError(
                f"{name}: inputs are {[i.name for i in ins]}, expected exactly ['{INPUT_NAME}']"
            )
        if ins[0].type != "tensor(float)":
            raise ModelContractError(f"{name}: input {INPUT_NAME} is {ins[0].type}, expected tensor(float)")
        if [o.name for o in outs] != list(OUTPUT_NAMES):
            raise ModelContractError(
                f"{name}: outputs are {[o.name for o in outs]}, expected {list(OUTPUT_NAMES)} in that order"
            )
        for o in outs:
            if o.type != "tensor(float)":
                raise ModelContractError(f"{name}: output {o.name} is {o.type}, expected tensor(float)")
        for v in (ins[0], *outs):
            if len(v.shape) != 2:
                raise ModelContractError(f"{name}: {v.name} has shape {v.shape}, expected [batch, n]")
            if v is ins[0] and _static_dim(v.shape[0]) is not None:
                raise ModelContractError(
                    f"{name}: {v.name} has a fixed batch axis {v.shape}; the batch axis must be dynamic"
                )
        obs_size = _static_dim(ins[0].shape[1])
        # With a dynamic feature axis, a model built for another observation size loads fine
        # and only fails in the trial run, whose message then says where our size came from.
        obs_size_from = (
            None
            if obs_size is not None
            else (f"{spec.env_id}'s obs_size" if spec is not None else "the model's obs_size metadata")
        )
        num_actions = _static_dim(outs[0].shape[1])
        if _static_dim(outs[1].shape[1]) not in (None, 1):
            raise ModelContractError(f"{name}: value has shape {outs[1].shape}, expected [batch, 1]")
        if spec is not None:
            if obs_size not in (None, spec.obs_size):
                raise ModelContractError(
                    f"{name}: observation has {obs_size} features, {spec.env_id} needs {spec.obs_size}"
                )
            if num_actions not in (None, spec.num_actions):
                raise ModelContractError(
                    f"{name}: policy_logits has {num_actions} actions, {spec.env_id} needs {spec.num_actions}"
                )
            obs_size, num_actions = spec.obs_size, spec.num_actions
        if obs_size is None:
            obs_size = self._size_from_metadata("obs_size", "observation size")
        if num_actions is None:
            num_actions = self._size_from_metadata("num_actions", "number of actions")
        return obs_size, num_actions, obs_size_from

    def _size_from_metadata(self, key: str, what: str) -> int:
        try:
            return int(self.metadata[key])
        except (KeyError, ValueError):
            raise ModelContractError(
                f"{self.path.name}: {what} is not fixed in the graph or metadata; pass the game spec"
            ) from None

    def _trial_run(self, obs: np.ndarray, obs_size_from: str | None) -> None:
        try:
            logits, values = self.run(obs)
        except ModelContractError:
            raise
        except Exception as e:
            # onnxruntime's messages can span lines; the caller prints ours as one line.
            detail = " ".join(str(e).split())
            if obs_size_from is not None:
                raise ModelContractError(
                    f"{self.path.name}: observation has a dynamic feature axis but the model does not accept "
                    f"{self.obs_size} features ({obs_size_from}): {detail}"
                ) from e
            raise ModelContractError(
                f"{self.path.name}: trial run on {len(obs)} positions failed: {detail}"
            ) from e
        bad = ~(np.isfinite(logits).all(axis=1) & np.isfinite(values))
        if bad.any():
            raise ModelContractError(
                f"{self.path.name}: output is NaN or inf on {int(bad.sum())} of {len(obs)} trial positions"
            )

    # --- inference -------------------------------------------------------------------------
    def run(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs: logits [n, A] and values [n] (checked shapes)."""
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        logits, values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: obs})
        n = obs.shape[0]
        if logits.shape != (n, self.num_actions):
            raise ModelContractError(
                f"{self.path.name}: policy_logits came back {list(logits.shape)}, expected [{n}, {self.num_actions}]"
            )
        if values.shape not in ((n, 1), (n,)):
            raise ModelContractError(
                f"{self.path.name}: value came back {list(values.shape)}, expected [{n}, 1]"
            )
        return logits, values.reshape(n)

    def evaluate(self, obs: np.ndarray, legal_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Softmax of the logits over legal moves (the contract leaves masking to us), and the
        value clipped to [-1, 1], side-to-move view."""
        logits, values = self.run(obs)
        return masked_softmax(logits, legal_masks), np.clip(values, -1.0, 1.0)

    def __repr__(self) -> str:
        int8 = ", int8" if self.int8 else ""
        return f"OnnxPolicy({self.path.name}, env_id={self.env_id}, step={self.step}{int8})"


def trial_observations(
    spec: GameSpec | None, env_id: str | None, obs_size: int, num_actions: int
) -> np.ndarray:
    """The boards a model must answer with finite numbers before anyone uses it.

    With the rules of its game: the initial position and random legal positions (fixed seed,
    so a refusal is reproducible). With only the shapes: observations laid out like real
    ones. With neither: the all-zero observation, the one input every model takes.
    """
    rng = np.random.default_rng(0)
    rules_for = spec.env_id if spec is not None else env_id
    if rules_for in KNOWN_ENV_IDS:
        game = get_game(rules_for)
        if (game.spec.obs_size, game.spec.num_actions) == (obs_size, num_actions):
            return np.stack([game.encode(s) for s in game.random_positions(TRIAL_POSITIONS, rng)])
    if spec is not None:
        return sample_observations(spec, TRIAL_POSITIONS, seed=0)
    return np.zeros((2, obs_size), dtype=np.float32)


def masked_softmax(logits: np.ndarray, legal_masks: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    legal = np.asarray(legal_masks, dtype=bool)
    with np.errstate(invalid="ignore", over="ignore"):
        z = np.where(legal, logits.astype(np.float64) / max(temperature, 1e-8), -np.inf)
        z = z - np.max(z, axis=-1, keepdims=True)
        p = np.where(legal, np.exp(z), 0.0)
    total = p.sum(axis=-1, keepdims=True)
    # A row without legal moves (should not happen) gets zeros, never NaN.
    return np.divide(p, total, out=np.zeros_like(p), where=total > 0)
