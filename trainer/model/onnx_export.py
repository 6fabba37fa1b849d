"""ONNX export and verification of a policy-value net (docs/contract.md section 3).

`export_onnx` writes the file; `verify_onnx` proves it is one an actor can load and that it
computes what the PyTorch module computes; `read_model_metadata` reads its provenance back.
Moving files into place is `trainer/model/publish.py`'s job.

Both of torch's exporters give a correct dynamic `batch` axis (input and both outputs) and
match PyTorch far inside `ATOL`; we use the TorchScript exporter because it is one to two
orders of magnitude faster than the dynamo one (benchmarks/publish_bench.py has the figures),
which keeps a publish cheap. torch marks it deprecated; if it is ever missing or fails,
`export_onnx` falls back to the dynamo exporter by itself (and logs a warning).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

import trainer
from trainer.games.base import GameSpec
from trainer.model.contract import INPUT_NAME, OUTPUT_NAMES, read_model_metadata, sample_observations

if TYPE_CHECKING:
    import onnx

BATCH_DIM = "batch"
# The oldest opset the contract allows, so the widest range of actor onnxruntime builds load
# our files. The dynamo exporter's own opset is 18 (it would down-convert 17 with warnings).
OPSET_TORCHSCRIPT = 17
OPSET_DYNAMO = 18
# Absolute tolerance between onnxruntime and PyTorch, on both outputs.
ATOL = 1e-4
# Dummy batch for tracing: not 1, so no exporter can mistake the batch for a broadcast axis.
_TRACE_BATCH = 2

Exporter = Literal["torchscript", "dynamo"]

log = logging.getLogger(__name__)

# torch's exporters keep module-global state (the TorchScript one refuses to start while
# `GLOBALS.in_onnx_export` is set), so two exports at once in one process must not overlap:
# the daemon publishes from a worker thread, and tests or tools may export beside it.
_EXPORT_LOCK = threading.Lock()


class PublishError(RuntimeError):
    """An exported model failed a check; it must not be published. The daemon logs it and
    keeps training."""


# --- export ----------------------------------------------------------------------------------
def export_onnx(
    module: nn.Module,
    spec: GameSpec,
    path: str | Path,
    metadata: dict[str, str],
    *,
    exporter: Exporter = "torchscript",
) -> None:
    """Export `module` (obs [B, obs_size] -> (logits [B, A], value [B, 1])) to `path`.

    The file is written in place, not atomically: `publish_model` is the way to make a file
    visible to actors. `metadata` (stringified) goes into the model's metadata_props after the
    provenance this function knows itself (env_id, shapes, created_at, trainer_version); a
    caller key such as `created_at` overrides it, but `env_id` must match `spec`.
    """
    if metadata.get("env_id", spec.env_id) != spec.env_id:
        raise ValueError(f"metadata env_id {metadata['env_id']!r} != spec env_id {spec.env_id!r}")
    net = inference_copy(module)
    dummy = torch.from_numpy(sample_observations(spec, _TRACE_BATCH, seed=0))
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"unknown exporter {exporter!r}")
    with _EXPORT_LOCK:
        if exporter == "torchscript":
            try:
                proto = _export_torchscript(net, dummy)
            except Exception as e:  # a future torch without the legacy exporter
                log.warning("TorchScript ONNX export failed (%s); trying the dynamo exporter", e)
                proto = _export_dynamo(net, dummy)
        else:
            proto = _export_dynamo(net, dummy)

    props = {
        "env_id": spec.env_id,
        "obs_size": str(spec.obs_size),
        "num_actions": str(spec.num_actions),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "trainer_version": trainer.__version__,
    }
    props.update({str(k): str(v) for k, v in metadata.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "selfplay-trainer"
    proto.producer_version = trainer.__version__
    # Serialising the whole proto ourselves keeps every weight inside the one file: no
    # external-data sidecar an actor would have to find (models here are far below 2 GB).
    Path(path).write_bytes(proto.SerializeToString())


def inference_copy(module: nn.Module) -> nn.Module:
    """A CPU float32 eval-mode deep copy, so the training module (maybe on a GPU, in train
    mode, channels-last, compiled) is never touched by an export or a check.

    A copy made here is returned as it is: a publish copies the weights once and its
    export and check share that copy."""
    if getattr(module, "_is_inference_copy", False):
        return module
    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper
    net = copy.deepcopy(module)
    net = net.to(device="cpu", dtype=torch.float32).to(memory_format=torch.contiguous_format)
    net.eval()
    net.requires_grad_(False)
    net._is_inference_copy = True
    return net


def _export_torchscript(net: nn.Module, dummy: torch.Tensor) -> onnx.ModelProto:
    import onnx  # heavy (it loads ml_dtypes): only a process that publishes pays for it

    buf = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            net,
            (dummy,),
            buf,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: BATCH_DIM} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=OPSET_TORCHSCRIPT,
            do_constant_folding=True,
            verbose=False,
        )
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(net: nn.Module, dummy: torch.Tensor) -> onnx.ModelProto:
    with _quiet():
        program = torch.onnx.export(
            net,
            (dummy,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},),
            opset_version=OPSET_DYNAMO,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    return program.model_proto


# Exporter noise, silenced by message rather than with `warnings.catch_warnings()`: publishing
# runs on a worker thread, and catch_warnings swaps the process-wide filter list, racing with
# any other thread that does the same. These filters only match the exporters' own messages.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export")
warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=r".*treespec.*LeafSpec", category=FutureWarning)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute the exporters' loggers (the dynamo exporter logs a warning per missing torchvision
    op on each export). Only torch's own export loggers are touched, and C++ prints to fd 2
    are left alone: redirecting the fd would swallow other threads' output too."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")
    ]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# --- verification -----------------------------------------------------------------------------
def verify_onnx(
    path: str | Path,
    module: nn.Module,
    spec: GameSpec,
    batch_sizes: Sequence[int] = (1, 37),
) -> None:
    """Raise `PublishError` unless the file at `path` is a valid contract model whose
    onnxruntime outputs equal `module`'s (eval mode, CPU) within `ATOL` at each batch size."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:
        raise PublishError(f"{path.name}: fails the ONNX checker: {e}") from e
    _check_graph(proto, spec, path.name)

    import onnxruntime as ort  # heavy import, only where it is needed

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # errors come back as exceptions; don't also print them
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PublishError(f"{path.name}: onnxruntime cannot load it: {e}") from e
    _check_session_io(session, spec, path.name)

    run_options = ort.RunOptions()
    run_options.log_severity_level = 4
    net = inference_copy(module)
    a = spec.num_actions
    for batch in batch_sizes:
        obs = sample_observations(spec, batch, seed=1000 + batch)
        try:
            got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: obs}, run_options)
        except Exception as e:
            raise PublishError(f"{path.name}: onnxruntime failed at batch {batch}: {e}") from e
        with torch.no_grad():
            want = [t.detach().float().numpy() for t in net(torch.from_numpy(obs))]
        for name, g, w, shape in zip(OUTPUT_NAMES, got, want, ((batch, a), (batch, 1))):
            if g.dtype != np.float32 or g.shape != shape:
                raise PublishError(
                    f"{path.name}: {name} at batch {batch} is {g.dtype}{list(g.shape)}, "
                    f"expected float32{list(shape)}"
                )
            if w.shape != shape:
                raise PublishError(
                    f"{path.name}: PyTorch {name} has shape {list(w.shape)}, expected {list(shape)}"
                )
            if not (np.isfinite(g).all() and np.isfinite(w).all()):
                raise PublishError(f"{path.name}: {name} at batch {batch} has NaN or inf values")
            err = float(np.abs(g - w).max())
            if err > ATOL:
                raise PublishError(
                    f"{path.name}: {name} at batch {batch} differs from PyTorch by {err:.3g} (> {ATOL})"
                )
        if np.abs(got[1]).max() > 1.0 + 1e-6:
            raise PublishError(f"{path.name}: value outside [-1, 1] (is the head missing its tanh?)")


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
        for d in value_info.type.tensor_type.shape.dim
    ]


def _check_graph(proto: onnx.ModelProto, spec: GameSpec, name: str) -> None:
    import onnx

    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 17:
        raise PublishError(f"{name}: opset {opset} < 17")
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise PublishError(f"{name}: weight {init.name} is stored as external data")
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    expected = [
        (inputs, [INPUT_NAME], [[spec.obs_size]]),
        (list(proto.graph.output), list(OUTPUT_NAMES), [[spec.num_actions], [1]]),
    ]
    for values, names, tails in expected:
        got_names = [v.name for v in values]
        if got_names != names:
            raise PublishError(f"{name}: graph has {got_names}, expected {names}")
        for v, tail in zip(values, tails):
            if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise PublishError(f"{name}: {v.name} is not float32")
            dims = _dims(v)
            # The batch axis must be symbolic: a number there means the export baked in the
            # trace batch and actors batching positions would fail.
            if len(dims) != 2 or not isinstance(dims[0], str) or dims[1:] != tail:
                raise PublishError(f"{name}: {v.name} has shape {dims}, expected [batch, {tail[0]}]")


def _check_session_io(session, spec: GameSpec, name: str) -> None:
    ins = [(i.name, i.type) for i in session.get_inputs()]
    outs = [(o.name, o.type) for o in session.get_outputs()]
    if ins != [(INPUT_NAME, "tensor(float)")] or outs != [(n, "tensor(float)") for n in OUTPUT_NAMES]:
        raise PublishError(f"{name}: onnxruntime sees inputs {ins} and outputs {outs}")


__all__ = [
    "ATOL",
    "PublishError",
    "export_onnx",
    "inference_copy",
    "read_model_metadata",
    "sample_observations",
    "verify_onnx",
]
