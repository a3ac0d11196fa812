"""Read an offline wandb run back: its .wandb file is a LevelDB-style record log of wandb's own protobuf
Records (wandb.proto.wandb_internal_pb2), which is what `wandb sync` uploads."""

import struct
from pathlib import Path

BLOCK, HEADER = 32 * 1024, 7  # 32 KiB blocks; each chunk: crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    out, pending, pos = [], b"", HEADER  # the file starts with a 7-byte header of its own
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def summarize(run_dir: Path) -> dict:
    """group, job_type, name, tags, config keys and every logged history key of one offline run folder."""
    (path,) = run_dir.glob("run-*.wandb")
    info = {"history_keys": set(), "config_keys": set()}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info.update(group=rec.run.run_group, job_type=rec.run.job_type, name=rec.run.display_name,
                        project=rec.run.project, tags=list(rec.run.tags))
            info["config_keys"] |= {item.key or "/".join(item.nested_key) for item in rec.run.config.update}
        elif kind == "history":
            info["history_keys"] |= {item.key or "/".join(item.nested_key) for item in rec.history.item}
        elif kind == "config":
            info["config_keys"] |= {item.key or "/".join(item.nested_key) for item in rec.config.update}
    return info
