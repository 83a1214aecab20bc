"""Read what the wandb SDK wrote for an offline run, as `wandb sync` would upload it.

Why a reader here: wandb 0.31 ships no Python reader for its `.wandb` transaction log (the old
`wandb.sdk.internal.datastore` is gone; `wandb sync` and `wandb beta leet` read it inside the Go
core), and an offline run writes no wandb-summary.json, config.yaml or wandb-metadata.json: the log
is the only record of the config, history, summary and artifacts. Its framing is LevelDB's log
format, which is small and stable:

    header  := ":W&B" (4 bytes), magic 0xBEE1 (uint16 LE), version 0 (uint8)
    then 32 KiB blocks of chunks:
    chunk   := crc32 (uint32 LE, of the type byte then the data), length (uint16 LE), type (uint8: 1 FULL,
               2 FIRST, 3 MIDDLE, 4 LAST), data; a block's tail shorter than a chunk header is zero padding

Each record is wandb's own protobuf `Record` (wandb.proto.wandb_internal_pb2), parsed with those
classes, so field names and value encodings are exactly the SDK's.
"""

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B transaction log"
    records, pending, position = [], b"", HEADER.size
    while position + CHUNK.size <= len(data):
        room = BLOCK - position % BLOCK
        if room < CHUNK.size:  # a block's zero-padded tail
            position += room
            continue
        checksum, length, kind = CHUNK.unpack_from(data, position)
        if (checksum, length, kind) == (0, 0, 0):  # preallocated, unwritten space
            break
        chunk = data[position + CHUNK.size : position + CHUNK.size + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"bad checksum at byte {position} of {path}"
        position += CHUNK.size + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def set_nested(target: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def item_keys(item) -> list[str]:
    return list(item.nested_key) or [item.key]


@dataclass
class OfflineRun:
    """One offline-run-* folder: the run record, and config, history, summary and artifacts as logged."""

    folder: Path
    run: Any = None  # wandb_internal_pb2.RunRecord
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one dict per history row; "_step" is its step
    summary: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)  # wandb_internal_pb2.ArtifactRecord
    kinds: list[str] = field(default_factory=list)  # every record's type, in order

    @property
    def id(self) -> str:
        return self.run.run_id

    @property
    def steps(self) -> list[int]:
        return [row["_step"] for row in self.history]

    def artifact(self, kind: str, name_part: str = ""):
        found = [a for a in self.artifacts if a.type == kind and name_part in a.name]
        assert found, (
            f"no {kind} artifact named *{name_part}* in {self.folder}: {[(a.type, a.name) for a in self.artifacts]}"
        )
        return found[-1]


def read_run(folder: Path) -> OfflineRun:
    (log,) = folder.glob("*.wandb")
    run = OfflineRun(folder)
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        run.kinds.append(kind)
        if kind == "run":
            run.run = record.run
            for item in record.run.config.update:
                set_nested(run.config, item_keys(item), json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                set_nested(run.config, item_keys(item), json.loads(item.value_json))
        elif kind == "history":
            row = {}
            for item in record.history.item:
                set_nested(row, item_keys(item), json.loads(item.value_json))
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                set_nested(run.summary, item_keys(item), json.loads(item.value_json))
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline run under run_dir/wandb/, oldest first (the folder names start with the time)."""
    return [read_run(folder) for folder in sorted((run_dir / "wandb").glob("offline-run-*"))]
