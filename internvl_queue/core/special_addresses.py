"""Which IP addresses are public unicast destinations, decided from explicit tables.

Python's ``ipaddress`` answers ``is_global``, ``is_private`` and the like from lists that change
between patch releases (Debian's 3.11.2 and 3.11.7 disagree on ``192.0.0.8`` and
``64:ff9b:1::/48``), and it does not decode most of the ways an IPv6 address carries an IPv4
one. So nothing here asks those properties: the tables below follow the IANA IPv4 and IPv6
Special-Purpose Address Registries (each block with its RFC), plus multicast and, for IPv6, the
rule that public unicast is ``2000::/3`` only (the IANA IPv6 Address Space registry).

Every IPv4 address wrapped in an IPv6 one is decoded. Where the wrapping is a real way of
reaching that IPv4 host (IPv4-mapped, NAT64's well-known prefix, 6to4), the IPv4 address decides:
``64:ff9b::808:808`` is 8.8.8.8 to an IPv6-only host behind DNS64, and refusing it would break
webhooks there. The other wrappings are never public: IPv4-compatible and IPv4-translated are
outside ``2000::/3`` (a tunnel interface may still carry them to the IPv4 host), Teredo and
local-use NAT64 are not globally reachable by the registry.

Standard library only (and no ``is_*`` property): the SSRF test matrix runs on every interpreter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

__all__ = ["Address", "Embedding", "embedding", "not_a_destination", "refusal", "wrapped_ipv4"]

Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class _Block:
    network: IPv4Network | IPv6Network
    what: str  # a noun phrase for messages: "a loopback address"


def _blocks(*rows: tuple[str, str]) -> tuple[_Block, ...]:
    """The rows as blocks, most specific first, so a lookup finds the narrowest match."""
    blocks = [_Block(ip_network(cidr), what) for cidr, what in rows]
    return tuple(sorted(blocks, key=lambda block: -block.network.prefixlen))


# IPv4 blocks that are not globally reachable (IANA IPv4 Special-Purpose Address Registry), and
# multicast. The registry's globally reachable entries outside these (AS112 192.31.196.0/24 and
# 192.175.48.0/24, RFC 7534/7535; AMT 192.52.193.0/24, RFC 7450) are ordinary public addresses.
_IPV4 = _blocks(
    ("0.0.0.0/8", "a 'this network' address"),  # RFC 791 §3.2; 0.0.0.0/32: RFC 1122 §3.2.1.3
    ("10.0.0.0/8", "a private-use address"),  # RFC 1918
    # RFC 6598. Cloud metadata services live here too (100.100.100.200).
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("127.0.0.0/8", "a loopback address"),  # RFC 1122 §3.2.1.3
    ("169.254.0.0/16", "a link-local address"),  # RFC 3927; cloud metadata at 169.254.169.254
    ("172.16.0.0/12", "a private-use address"),  # RFC 1918
    # RFC 6890 §2.1, refused whole: 192.0.0.0/29 DS-Lite (RFC 7335), 192.0.0.8 dummy (RFC 7600),
    # 192.0.0.170-171 NAT64 discovery (RFC 7050, RFC 8880); also the two anycast service
    # addresses the registry calls globally reachable, 192.0.0.9 PCP (RFC 7723) and 192.0.0.10
    # TURN (RFC 8155): services answered near the sender, never a webhook receiver.
    ("192.0.0.0/24", "an IETF protocol assignment"),
    ("192.0.2.0/24", "a documentation address"),  # TEST-NET-1, RFC 5737
    # RFC 7526 (and 192.88.99.2, the 6a44 relay, RFC 6751): relays near the sender.
    ("192.88.99.0/24", "a deprecated 6to4 relay anycast address"),
    ("192.168.0.0/16", "a private-use address"),  # RFC 1918
    ("198.18.0.0/15", "a benchmarking address"),  # RFC 2544
    ("198.51.100.0/24", "a documentation address"),  # TEST-NET-2, RFC 5737
    ("203.0.113.0/24", "a documentation address"),  # TEST-NET-3, RFC 5737
    ("224.0.0.0/4", "a multicast address"),  # RFC 5771 (IANA IPv4 Multicast registry)
    ("240.0.0.0/4", "a reserved address"),  # RFC 1112 §4
    ("255.255.255.255/32", "the limited broadcast address"),  # RFC 8190, RFC 919 §7
)

# IPv6 blocks that are not globally reachable (IANA IPv6 Special-Purpose Address Registry),
# site-local and multicast; the IPv4 wrappings are in _EMBEDDINGS. Anything else outside
# 2000::/3 is refused by _GLOBAL_UNICAST. AS112's 2620:4f:8000::/48 (RFC 7534) is public.
_IPV6 = _blocks(
    ("::/128", "the unspecified address"),  # RFC 4291 §2.5.2
    ("::1/128", "the loopback address"),  # RFC 4291 §2.5.3
    ("100::/64", "a discard-only address"),  # RFC 6666
    ("100:0:0:1::/64", "a dummy address"),  # RFC 9780
    # RFC 2928, refused whole, with the few entries the registry calls globally reachable:
    # anycast services (2001:1::1-3, RFC 7723, RFC 8155, RFC 9665), AMT relays (2001:3::/32,
    # RFC 7450), AS112 (2001:4:112::/48, RFC 7535), identifiers that are not locators
    # (ORCHIDv2 2001:20::/28, RFC 7343; DETs 2001:30::/28, RFC 9374): none is a webhook receiver.
    ("2001::/23", "an IETF protocol assignment"),
    ("2001:2::/48", "a benchmarking address"),  # RFC 5180, RFC Errata 1752
    ("2001:10::/28", "a deprecated ORCHID address"),  # RFC 4843
    ("2001:20::/28", "an ORCHIDv2 identifier"),  # RFC 7343
    ("2001:db8::/32", "a documentation address"),  # RFC 3849
    ("3fff::/20", "a documentation address"),  # RFC 9637
    ("5f00::/16", "a segment routing (SRv6) SID"),  # RFC 9602
    ("fc00::/7", "a unique-local address"),  # RFC 4193, RFC 8190
    ("fe80::/10", "a link-local address"),  # RFC 4291 §2.5.6
    ("fec0::/10", "a deprecated site-local address"),  # RFC 3879
    ("ff00::/8", "a multicast address"),  # RFC 4291 §2.7
)

# RFC 4291 §2.4 and the IANA IPv6 Address Space registry: global unicast is 2000::/3 only.
_GLOBAL_UNICAST = IPv6Network("2000::/3")

_LOW32 = 0xFFFFFFFF


def _low32(value: int) -> tuple[IPv4Address, ...]:
    return (IPv4Address(value & _LOW32),)


def _sixtofour(value: int) -> tuple[IPv4Address, ...]:
    return (IPv4Address((value >> 80) & _LOW32),)  # 2002:AABB:CCDD::/48, RFC 3056 §2


def _teredo(value: int) -> tuple[IPv4Address, ...]:
    # RFC 4380 §4: 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC, the client's address with its bits
    # inverted (the port too). Both the server and the client are where packets may go.
    return (IPv4Address((value >> 64) & _LOW32), IPv4Address(~value & _LOW32))


@dataclass(frozen=True)
class Embedding:
    """A way an IPv6 address carries IPv4 ones."""

    network: IPv6Network
    what: str
    decode: Callable[[int], tuple[IPv4Address, ...]]
    # True: the IPv4 address decides (this is a real way of reaching it). False: never public.
    follows_ipv4: bool
    # False where the decoding is only a guess (local-use NAT64 may put the IPv4 address at other
    # offsets, RFC 6052 §2.2), so an allowlisted IPv4 network must not open it.
    allowlist_by_ipv4: bool = True


_EMBEDDINGS = tuple(
    sorted(
        (
            # RFC 4291 §2.5.5.2: what a dual-stack socket (or AI_V4MAPPED) uses for IPv4 peers.
            Embedding(IPv6Network("::ffff:0:0/96"), "an IPv4-mapped IPv6 address", _low32, True),
            # RFC 2765 §2.1 (SIIT): outside 2000::/3.
            Embedding(
                IPv6Network("::ffff:0:0:0/96"), "an IPv4-translated IPv6 address", _low32, False
            ),
            # RFC 4291 §2.5.5.1, deprecated: outside 2000::/3; a sit tunnel may carry it.
            Embedding(
                IPv6Network("::/96"), "a deprecated IPv4-compatible IPv6 address", _low32, False
            ),
            # RFC 6052 §2.1, globally reachable: the gateway connects to the IPv4 address.
            Embedding(IPv6Network("64:ff9b::/96"), "a NAT64 address", _low32, True),
            # RFC 8215, not globally reachable; decoded in its /96 form for the message only.
            Embedding(
                IPv6Network("64:ff9b:1::/48"), "a local-use NAT64 address", _low32, False, False
            ),
            # RFC 3056; relays deliver to the IPv4 address.
            Embedding(IPv6Network("2002::/16"), "a 6to4 address", _sixtofour, True),
            # RFC 4380, RFC 8190: not globally reachable.
            Embedding(IPv6Network("2001::/32"), "a Teredo address", _teredo, False),
        ),
        key=lambda e: -e.network.prefixlen,
    )
)

# Addresses a TCP connection cannot (or must not) go to whatever the operator allows: multicast
# and broadcast take no connections, and connecting to the unspecified address reaches this host.
_NOT_DESTINATIONS = _blocks(
    ("0.0.0.0/32", "the unspecified address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the limited broadcast address"),
    ("::/128", "the unspecified address"),
    ("ff00::/8", "a multicast address"),
)


# Inside ::/96 (IPv4-compatible) but addresses of their own (RFC 4291 §2.5.2, §2.5.3).
_NOT_EMBEDDINGS = (IPv6Address("::"), IPv6Address("::1"))


def _lookup(address: Address, blocks: tuple[_Block, ...]) -> _Block | None:
    return next((block for block in blocks if address in block.network), None)


def _described(block: _Block) -> str:
    return f"{block.what} ({block.network})"


def embedding(address: Address) -> Embedding | None:
    """How ``address`` wraps IPv4 addresses, if it does (loopback and unspecified do not)."""
    if isinstance(address, IPv4Address) or address in _NOT_EMBEDDINGS:
        return None
    return next((e for e in _EMBEDDINGS if address in e.network), None)


def wrapped_ipv4(address: Address) -> tuple[IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries (none for an IPv4 address or a plain IPv6)."""
    found = embedding(address)
    return found.decode(int(address)) if found else ()


def not_a_destination(address: Address) -> str | None:
    """Why no connection may go to ``address`` or what it wraps, even if allowlisted; else None."""
    for candidate in (address, *wrapped_ipv4(address)):
        block = _lookup(candidate, _NOT_DESTINATIONS)
        if block:
            return _described(block) if candidate == address else _wrapping(address, block)
    return None


def _wrapping(address: Address, block: _Block) -> str:
    found = embedding(address)
    assert found is not None
    inner = " and ".join(str(a) for a in found.decode(int(address)))
    return f"{found.what} ({found.network}) wrapping {inner}, {_described(block)}"


def refusal(address: Address) -> str | None:
    """Why ``address`` is not a public unicast destination (one phrase naming its class), or
    None if it is one."""
    if isinstance(address, IPv4Address):
        block = _lookup(address, _IPV4)
        return _described(block) if block else None
    found = embedding(address)
    if found:
        return _refusal_of_wrapping(address, found)
    block = _lookup(address, _IPV6)
    if block:
        return _described(block)
    if address not in _GLOBAL_UNICAST:
        return f"not a global unicast address (outside {_GLOBAL_UNICAST})"
    return None


def _refusal_of_wrapping(address: IPv6Address, found: Embedding) -> str | None:
    inner = found.decode(int(address))
    reasons = [(ipv4, refusal(ipv4)) for ipv4 in inner]
    refused = [f"{ipv4}, {reason}" for ipv4, reason in reasons if reason]
    wrapper = f"{found.what} ({found.network})"
    if found.follows_ipv4:
        return f"{wrapper} wrapping {refused[0]}" if refused else None
    if refused:
        return f"{wrapper} wrapping {' and '.join(refused)}"
    return f"{wrapper} wrapping {' and '.join(str(ipv4) for ipv4 in inner)}"
