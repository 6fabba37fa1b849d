"""Data-parallel training under torchrun: one process per device, gradients averaged.

    process_group.py   who am I (rank, world size) from torchrun's environment; the
                       process group (gloo on CPU, NCCL on CUDA) with a bounded timeout
    agreement.py       the one small all-reduce per step: should every rank stop, wait or
                       train, so no rank enters a collective the others never reach
    rank_source.py     a rank's view of its replay source: its own RNG stream, the reuse
                       budget counted in global samples, its state saved as the run's
    ddp.py             wrapping the training forward pass in DistributedDataParallel

Without torchrun's environment `DistContext.single()` stands in: world size 1, no process
group, and every collective is the identity, so a single process runs the same code.
"""
