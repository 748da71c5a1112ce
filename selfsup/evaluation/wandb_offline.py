"""Read the logged history of an offline wandb run (RUN/wandb/offline-run-*/run-*.wandb) without wandb's service.

The file is wandb's transaction log: a 7-byte header (":W&B", magic, version), then LevelDB-log-format blocks
of 32 KiB holding records (4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last), each a
serialised `wandb_internal_pb2.Record`. History records carry one logged row (`trainer/global_step` is the
step Lightning logged it at; `_runtime` the seconds since the run started).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

HEADER_LEN = 7
BLOCK = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(data: bytes) -> Iterator[bytes]:
    """The payloads of a LevelDB-log-format byte string after wandb's file header."""
    pos, pending = HEADER_LEN, b""
    while pos + RECORD_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD_HEADER.size:  # the block's tail is padding
            pos += left_in_block
            continue
        _, length, kind = RECORD_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left_in_block
            continue
        chunk = data[pos + RECORD_HEADER.size: pos + RECORD_HEADER.size + length]
        pos += RECORD_HEADER.size + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def history(path: Path) -> list[dict[str, float]]:
    """The numeric values of each logged row, with `step` (Lightning's step) and `wandb/runtime_s`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        return []
    rows = []
    for payload in records(data):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # a torn record at the end of a killed run's file
            break
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, float] = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            value = json.loads(item.value_json)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(value)
        if "trainer/global_step" in row:
            row["step"] = row.pop("trainer/global_step")
        elif "_step" in row:
            row["step"] = row["_step"]
        if "_runtime" in row:
            row["wandb/runtime_s"] = row.pop("_runtime")
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def offline_runs(run_dir: Path) -> list[Path]:
    """The run files of a run folder's offline wandb runs, oldest first (a resumed run has several)."""
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
