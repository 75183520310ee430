"""Signatures on handover records (job chaining).

The core signs and verifies through a ``Keyring``: the trio runtime gives it
the node's libp2p ed25519 key (a peer id embeds its public key, so any node
can verify any other's signature from its id alone); simnet and the protocol
tests use ``SimKeyring``, real ed25519 keys derived from the node id, so a
forged record fails verification exactly as it would on the real network.
Pure computation: no clock, no randomness (ed25519 signing is deterministic).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


class Keyring(Protocol):
    def sign(self, data: bytes) -> bytes: ...

    def verify(self, node_id: str, data: bytes, signature: bytes) -> bool: ...


def _sim_key(node_id: str) -> Ed25519PrivateKey:
    seed = hashlib.sha256(f"p2pnode-sim-key:{node_id}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


class SimKeyring:
    """Ed25519 keys derived from node ids (simulation and tests only: anyone
    who knows an id can derive its key, which is fine where ids are names)."""

    def __init__(self, node_id: str) -> None:
        self._key = _sim_key(node_id)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def verify(self, node_id: str, data: bytes, signature: bytes) -> bool:
        try:
            _sim_key(node_id).public_key().verify(signature, data)
        except InvalidSignature:
            return False
        return True


class VerifiedCache:
    """A keyring that remembers the signatures it has verified.

    A chain node checks the same signatures again and again: every offer,
    report and ``describe`` verifies the whole log from its genesis, so the
    submitter of an n-stage chain re-checks O(n) signatures per report and per
    status poll, and an ed25519 verification is about as costly as a store
    commit on a loaded host.  A valid signature stays valid, so a verified
    ``(node, data, signature)`` is remembered (by the data's digest) and not
    checked again; failures are not remembered (they are rare and refused).
    Bounded: the oldest entries go first.  Pure, like the keyring it wraps."""

    def __init__(self, keys: Keyring, limit: int = 4096) -> None:
        self._keys = keys
        self._limit = limit
        self._verified: dict[tuple[str, bytes, bytes], None] = {}

    def sign(self, data: bytes) -> bytes:
        return self._keys.sign(data)

    def verify(self, node_id: str, data: bytes, signature: bytes) -> bool:
        key = (node_id, hashlib.sha256(data).digest(), signature)
        if key in self._verified:
            return True
        if not self._keys.verify(node_id, data, signature):
            return False
        if len(self._verified) >= self._limit:
            del self._verified[next(iter(self._verified))]
        self._verified[key] = None
        return True
