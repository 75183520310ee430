"""The node's long-term identity: one ed25519 key per data directory.

The key is stored in ``<data_dir>/node.key`` in libp2p's protobuf private-key
encoding (the format go/js/py-libp2p tools read), created once with mode 0600.
The peer id derives from the public key, so reusing the file keeps the node's
peer id across restarts; peers' records (leases, bids, directory entries)
refer to it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from p2pnode.errors import KeyFileError as KeyFileError  # re-exported

KEY_FILE = "node.key"


def load_or_create_key(data_dir: Path) -> KeyPair:
    """Load ``data_dir/node.key``, or create it (ed25519, mode 0600) if absent.

    Refuses (``KeyFileError``) a key file that group or others may read or
    write: a leaked key lets anyone impersonate this node, and silently
    "fixing" the mode would hide that it may already have leaked.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / KEY_FILE
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    key_pair = create_new_key_pair()
    blob = key_pair.private_key.serialize()
    try:
        # O_EXCL: two processes starting on the same data dir must not both
        # create (and one overwrite) a key; the loser loads the winner's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load(path)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but be explicit
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return key_pair


MAX_KEY_BYTES = 4096  # an ed25519 key file is 68 bytes; never read an unbounded file


def _load(path: Path) -> KeyPair:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
    # forever; the file type is checked right after, on the opened file.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise KeyFileError(f"{path} is a directory, not a key file") from None
    except PermissionError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # fstat on the opened file: no check-then-open race
        if stat.S_ISDIR(st.st_mode):
            raise KeyFileError(f"{path} is a directory, not a key file")
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path} is not a regular file (a FIFO, device or socket)")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"refusing to use it. If it has not leaked, run: chmod 600 {path}"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            blob = fh.read(MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    if not blob:
        # A crash between create and write leaves an empty file: say so
        # rather than failing inside protobuf parsing.
        raise KeyFileError(f"{path} is empty; remove it to create a new node key")
    if len(blob) > MAX_KEY_BYTES:
        raise KeyFileError(f"{path} is over {MAX_KEY_BYTES} bytes: not a node key")
    try:
        private_key: Any = deserialize_private_key(blob)
    except Exception as exc:  # protobuf / key parsing errors of several types
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise KeyFileError(f"{path} is not a valid libp2p private key ({detail})") from exc
    if private_key.get_type() != KeyType.Ed25519:
        raise KeyFileError(f"{path} holds a {private_key.get_type().name} key; expected ed25519")
    return KeyPair(private_key, private_key.get_public_key())


def peer_id_of(key_pair: KeyPair) -> str:
    """The base58 peer id string of ``key_pair`` (what ``Incoming.sender`` holds)."""
    return ID.from_pubkey(key_pair.public_key).to_base58()


class Libp2pKeyring:
    """The core's keyring on the real network: signs with this node's libp2p
    key; verifies with the public key embedded in the signer's peer id (an
    ed25519 peer id is an identity multihash of its public key), so no key
    exchange is needed and a record can only be signed by its node."""

    def __init__(self, key_pair: KeyPair) -> None:
        self._private = key_pair.private_key

    def sign(self, data: bytes) -> bytes:
        signature: bytes = self._private.sign(data)
        return signature

    def verify(self, node_id: str, data: bytes, signature: bytes) -> bool:
        try:
            public_key = ID.from_base58(node_id).extract_public_key()
        except Exception:  # not a peer id, or one that does not embed its key
            return False
        if public_key is None:
            return False
        try:
            return bool(public_key.verify(data, signature))
        except Exception:  # malformed signature bytes
            return False
