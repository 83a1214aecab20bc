"""Every file a run writes, and what a failed write tells the user.

Files that readers see whole or not at all are written beside their final name, then renamed over
it: `os.replace` is atomic on POSIX filesystems (NFS and Lustre included, within one folder), so a
crash mid-write leaves the old file, never half of a new one.

A write that fails (a full disk, a read-only filesystem, no permission) becomes one `WriteFailed`
naming the file, exit 2. Tensors are serialized in memory first and written here as bytes:
torch.save and safetensors report a full disk in their own words ("unexpected pos 576 vs 534"),
a plain write says "No space left on device". The trainer's last complete checkpoint stays as it was, so the same
command resumes once the cause is fixed.
"""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mnist_dist.errors import UserError, first_line

RESUME = "free space or fix permissions there, then run the same command again to resume"


class WriteFailed(UserError):
    """A file could not be written. The message names it, why, and what to do."""


def write_failure(path: Path, error: BaseException, fix: str = RESUME) -> WriteFailed:
    """The one-line error for a failed write of `path`: 'cannot write PATH (No space left on device); FIX.'"""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
    return WriteFailed(f"cannot write {path} ({reason}); {fix}.")


@contextmanager
def writing(path: Path, fix: str = RESUME) -> Iterator[None]:
    """Turn a failed write inside the block into the `WriteFailed` that names `path`."""
    try:
        yield
    except OSError as error:
        raise write_failure(path, error, fix) from None


def replace_atomically(path: Path, write: Callable[[Path], None], fix: str = RESUME) -> None:
    """Call `write(temporary)` for a file beside `path`, then move it over `path` in one step.

    A failed write removes the temporary (it may hold the last free blocks) and leaves `path` as it was.
    """
    temporary = path.with_name(path.name + ".tmp")
    with writing(path, fix):
        try:
            write(temporary)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def write_atomically(path: Path, content: str | bytes, fix: str = RESUME) -> None:
    """Readers see the old file or the new one, never half of one."""
    if isinstance(content, str):
        content = content.encode()
    replace_atomically(path, lambda temporary: temporary.write_bytes(content), fix)
