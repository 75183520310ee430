"""The data dir is private to the node's uid.

It holds the node key, the SQLite store (its WAL holds job env values, which
may be secrets), output blobs and the running tasks' workdirs.  ``make_private``
makes it 0700 whatever mode it had (a directory created beforehand with 0755
included), or refuses to start with one line when it cannot (not a directory,
owned by someone else, a read-only file system).  The process umask becomes
0o077 as well, so every file the node creates in it (``node.db-wal``, blobs,
workdirs) is unreadable by others even if the directory's mode is widened
later.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2pnode.errors import DataDirError as DataDirError  # re-exported


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/p2pnode``, else ``~/.local/share/p2pnode``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join("~", ".local", "share")
    return Path(base).expanduser() / "p2pnode"

__all__ = ["DataDirError", "make_private"]

PRIVATE_MODE = 0o700
UMASK = 0o077


def make_private(data_dir: Path) -> None:
    """Create ``data_dir`` (0700) or make the existing one 0700; set umask 077."""
    os.umask(UMASK)
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(f"the data dir {data_dir} is not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_MODE)
    except OSError as err:
        raise DataDirError(f"cannot create the data dir {data_dir}: {err.strerror}") from None
    try:
        st = os.stat(data_dir, follow_symlinks=True)
    except OSError as err:
        raise DataDirError(f"cannot read the data dir {data_dir}: {err.strerror or err}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirError(f"the data dir {data_dir} is not a directory")
    if st.st_uid != os.geteuid():
        raise DataDirError(
            f"the data dir {data_dir} belongs to uid {st.st_uid}, not to this node's uid "
            f"{os.geteuid()}: cannot make it private"
        )
    if stat.S_IMODE(st.st_mode) != PRIVATE_MODE:
        try:
            os.chmod(data_dir, PRIVATE_MODE)
        except OSError as err:
            raise DataDirError(
                f"cannot make the data dir {data_dir} private (chmod 700): {err.strerror or err}"
            ) from None
    # Files of an older node version, created before the umask was set.
    for name in ("node.db", "node.db-wal", "node.db-shm"):
        try:
            os.chmod(data_dir / name, 0o600)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise DataDirError(f"cannot make {data_dir / name} private: {err.strerror}") from None
