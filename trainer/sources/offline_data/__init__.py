"""Offline datasets: read HDF5 or JSONL, validate every number, hold the result as tensors.

Two file formats, one validator, one in-memory form. A file goes

    load.py       which format; the whole file, or `chunks.py` for a large HDF5 file
    hdf5.py       HDF5 datasets and attributes -> RawData (the format is described there)
    jsonl.py      one game per line -> RawData (the format is described there)
    validate.py   RawData -> OfflineDataset, every number checked, the row named on error
    spec.py       which game the data is for (a known game, or one built from the data)
    dataset.py    RawData, OfflineDataset (aligned tensors), OfflineDataError

Every bad input is an `OfflineDataError` naming the file and the key, row or line; the
commands print it as one `error:` line and exit with code 2.
"""

from trainer.sources.offline_data.chunks import HDF5Chunks
from trainer.sources.offline_data.dataset import (
    OfflineDataError,
    OfflineDataset,
    RawData,
)
from trainer.sources.offline_data.jsonl import parse_action_offsets
from trainer.sources.offline_data.load import (
    check_file,
    data_format,
    load_dataset,
    should_stream,
)
from trainer.sources.offline_data.validate import build_dataset

__all__ = [
    "HDF5Chunks",
    "OfflineDataError",
    "OfflineDataset",
    "RawData",
    "build_dataset",
    "check_file",
    "data_format",
    "load_dataset",
    "parse_action_offsets",
    "should_stream",
]
