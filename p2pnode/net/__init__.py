"""Building blocks of the libp2p transport (``p2pnode.libp2p_transport``).

``stack``: how a py-libp2p 0.8.1 host and gossipsub are configured, run and shut
down (every workaround for a py-libp2p default lives there, with its reason).
``framing``: the varint-length-prefixed frames of ``/p2pnode/frame/1.0.0``.
``credit``: yamux receive credit on frame streams, once per half window.
"""
