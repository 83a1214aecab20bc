"""Files that readers see whole or not at all: written beside their final name, then renamed over it.

`os.replace` is atomic on POSIX filesystems (NFS and Lustre included, within one folder), so a
crash mid-write leaves the old file, never half of a new one.
"""

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary)` for a file beside `path`, then move it over `path` in one step."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    replace_atomically(path, lambda temporary: temporary.write_text(text))
