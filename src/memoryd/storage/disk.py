"""The data directory's file system: whether it can be written at all (a
start-up check), its free space, and the floor below which memoryd stops
writing to it.

Why a floor: Qdrant Edge writes through memory-mapped files that are sparse
(WAL segments, payload and vector pages of 32 MiB each are created at full
length and backed by blocks only when a page is first touched). When the
file system is full, touching such a page does not fail with ENOSPC: the
kernel raises SIGBUS and the process dies, without a log line. So memoryd
never lets the engine write while less than the floor is free; a write is
refused instead, and the floor leaves room for the pages one write touches
(a write is at most one gRPC message, 16 MiB by default) and for SQLite.

`os.statvfs` is one cheap system call, so it is asked before every write:
no cache can go stale while another process fills the disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from memoryd.domain.errors import DomainError, QuotaViolation, ResourceExhausted, Unavailable

MIB = 1024 * 1024


@dataclass(frozen=True)
class DiskSpace:
    """Free space of the file system holding `path`, as seen by an
    unprivileged writer (`f_bavail`: blocks reserved for root not counted)."""

    path: Path
    free_bytes: int
    total_bytes: int

    @property
    def free_mb(self) -> float:
        return self.free_bytes / MIB


def disk_space(path: str | os.PathLike[str]) -> DiskSpace:
    """Free and total bytes of the file system that holds `path`."""
    st = os.statvfs(path)
    return DiskSpace(Path(path), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def disk_full(space: DiskSpace, floor_bytes: int, *, what: str = "writes") -> ResourceExhausted:
    """The error of a refused write: names the directory, the free space and
    the floor. No retry hint: freeing space is an operator's job."""
    return ResourceExhausted(
        f"the disk of the data directory {space.path} is full: {space.free_mb:.1f} MiB free, "
        f"memoryd keeps at least {floor_bytes / MIB:.0f} MiB free "
        f"(MEMORYD_MIN_FREE_DISK_MB); {what} are refused until space is freed. "
        "Reads keep working",
        [QuotaViolation("disk", f"{space.path}: {space.free_mb:.1f} MiB free")],
        reason="DISK_FULL",
    )


def check_free_space(
    path: str | os.PathLike[str], floor_bytes: int, *, what: str = "writes"
) -> DiskSpace:
    """Raises ResourceExhausted (reason DISK_FULL) when less than
    `floor_bytes` are free on `path`'s file system; answers the space."""
    space = disk_space(path)
    if space.free_bytes < floor_bytes:
        raise disk_full(space, floor_bytes, what=what)
    return space


class DataDirNotWritable(OSError):
    """The data directory cannot be created or written; the message names it
    and the cause in one line."""


def check_writable(path: Path) -> None:
    """Raises DataDirNotWritable when `path` cannot be created or a block
    written and synced there (read-only, not permitted, full)."""
    probe = path / f".memoryd-write-check-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as f:
            f.write(bytes(4096))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise DataDirNotWritable(f"the data directory {path} is not writable: {_why(err)}") from err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _why(err: OSError) -> str:
    reasons = {
        errno.EROFS: "it is on a read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exceeded",
    }
    return reasons.get(err.errno or 0, err.strerror or str(err))


def write_error(err: OSError, path: Path, floor_bytes: int, what: str) -> DomainError:
    """A failed write of a file of `what` (export files, document uploads):
    a full disk is RESOURCE_EXHAUSTED (DISK_FULL) like any refused write,
    anything else UNAVAILABLE naming the cause."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(disk_space(path.parent), floor_bytes, what=what)
    return Unavailable(f"cannot write a file of {what}: {os.strerror(err.errno or 0)}")


def allocated_files(root: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """The files under `root` that hold data, with the bytes each occupies
    on disk (a sparse file counts what is allocated, not its length)."""
    out: list[tuple[str, int]] = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                size = os.lstat(path).st_blocks * 512
                if size:
                    out.append((path, size))
    return out


def allocated_bytes(root: str | os.PathLike[str]) -> int:
    """Bytes the files under `root` occupy on disk."""
    return sum(size for _, size in allocated_files(root))
