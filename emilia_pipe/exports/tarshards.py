"""Tar shards of ``{key}.{ext}`` members, the container of WebDataset and Lhotse Shar.

Members get fixed metadata (time 0, mode 0644, no owner) so the same build gives the same bytes."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


class ShardedTar:
    """Writes ``pattern % n`` tars, starting a new one every ``per_shard`` samples."""

    def __init__(self, pattern: str | Path, per_shard: int):
        self.pattern, self.per_shard = str(pattern), per_shard
        self.tar: tarfile.TarFile | None = None
        self.index, self.count, self.paths = -1, 0, []

    def write(self, members: list[tuple[str, bytes]]) -> None:
        if self.tar is None or self.count >= self.per_shard:
            self.close()
            self.index += 1
            path = Path(self.pattern % self.index)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.tar, self.count = tarfile.open(path, "w", format=tarfile.PAX_FORMAT), 0
            self.paths.append(path)
        for name, data in members:
            add_member(self.tar, name, data)
        self.count += 1

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None
