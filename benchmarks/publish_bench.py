"""How long a model publish takes, and the two ONNX exporters side by side.

    python benchmarks/publish_bench.py [--repeats 5]

Nets are the daemon's own (trainer/model/networks.py): the tictactoe MLP (29 -> 128x3 ->
9 + 1) and the connect4 ResNet 64x4 (93 floats reshaped to planes inside the module).
Publish times are medians over --repeats publishes after one warm-up publish; exporter
times show the first (cold) export in the process and the median of the rest.

Measured in torch 2.13 CPU on a 2-core machine (cold = first export in the process, warm =
median of 5); this is why trainer/model/onnx_export.py uses the TorchScript exporter:

    net                          torchscript (dynamo=False)   dynamo (dynamo=True)
    tictactoe MLP 29-128x3-9+1   98 ms cold, 7.5 ms warm      2.26 s cold, 0.65 s warm
    connect4 ResNet 64x4         79 ms cold, 69 ms warm       1.57 s cold, 1.54 s warm

Both matched PyTorch within ~1e-7 at batch 1 and 37.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainer.games import get_game  # noqa: E402
from trainer.model.networks import build_network  # noqa: E402
from trainer.model.onnx_export import export_onnx, verify_onnx  # noqa: E402
from trainer.model.publish import publish_model  # noqa: E402

NETS = [("tictactoe", "mlp", "tictactoe MLP 128x3"), ("connect4", "resnet", "connect4 ResNet 64x4")]
META = {"samples_trained": "0", "rows_seen": "0"}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def bench_publish(repeats: int) -> None:
    print(f"publish_model (median of {repeats}, ms)")
    print(f"{'net':24} {'export':>8} {'verify':>8} {'rename':>8} {'total':>8} {'size KB':>8}")
    for env_id, kind, label in NETS:
        spec = get_game(env_id).spec
        torch.manual_seed(0)
        net = build_network(spec, kind).train()  # as the daemon hands it over
        with tempfile.TemporaryDirectory() as d:
            publish_model(net, spec, d, 0, META, max_keep=2)  # warm-up
            runs = [publish_model(net, spec, d, s, META, max_keep=2) for s in range(1, repeats + 1)]
            size = runs[-1].latest.stat().st_size / 1024
        med = {
            f: statistics.median(getattr(r, f) for r in runs)
            for f in ("export_seconds", "verify_seconds", "move_seconds", "seconds")
        }
        print(
            f"{label:24} {ms(med['export_seconds'])} {ms(med['verify_seconds'])} "
            f"{ms(med['move_seconds'])} {ms(med['seconds'])} {size:8.0f}"
        )


def bench_training_thread_cost(repeats: int) -> None:
    """The part of a publish the training thread waits for: the hook's CPU snapshot of the
    weights (the export, check and renames run on the publish worker thread)."""
    print(f"\ntraining-thread stall per publish (PublishHook snapshot, median of {repeats}, ms)")
    for env_id, kind, label in NETS:
        spec = get_game(env_id).spec
        net = build_network(spec, kind).train()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            copy.deepcopy(net).to("cpu").eval()
            times.append(time.perf_counter() - t)
        print(f"{label:24} {ms(statistics.median(times))}")


def bench_exporters(repeats: int) -> None:
    print(f"\nexport_onnx by exporter (ms; cold = first export in the process, warm = median of {repeats})")
    print(f"{'net':24} {'exporter':12} {'cold':>8} {'warm':>8}  dynamic batch (verify at 1, 37)")
    for env_id, kind, label in NETS:
        spec = get_game(env_id).spec
        torch.manual_seed(0)
        net = build_network(spec, kind)
        for exporter in ("torchscript", "dynamo"):
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "m.onnx"
                times = []
                for _ in range(repeats + 1):
                    t = time.perf_counter()
                    export_onnx(net, spec, path, META, exporter=exporter)
                    times.append(time.perf_counter() - t)
                try:
                    verify_onnx(path, net, spec)
                    ok = "ok"
                except Exception as e:  # report, keep benchmarking
                    ok = f"FAILED: {e}"
            print(f"{label:24} {exporter:12} {ms(times[0])} {ms(statistics.median(times[1:]))}  {ok}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_exporters(args.repeats)
    print()
    bench_publish(args.repeats)
    bench_training_thread_cost(args.repeats)


if __name__ == "__main__":
    main()
