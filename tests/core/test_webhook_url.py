"""The SSRF guard's address rule: only public unicast addresses, unless allowlisted."""

from __future__ import annotations

import ipaddress

import pytest

from internvl_queue.core.webhook_url import refused_address

ALLOW_LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "100.64.0.0",
        "100.127.255.255",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:169.254.169.254",
        "2002:a9fe:a9fe::1",
        "2002:0a00:0001::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::a00:1",
        "2001:db8::1",
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    assert refused_address(ipaddress.ip_address(address), [])


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700::1111", "2002:0808:0808::1"]
)
def test_public_addresses_pass(address: str) -> None:
    assert not refused_address(ipaddress.ip_address(address), [])


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "2002:7f00:0001::1"])
def test_allowlisted_networks_pass_also_when_wrapped(address: str) -> None:
    assert not refused_address(ipaddress.ip_address(address), ALLOW_LOOPBACK)


def test_an_allowlist_does_not_open_other_ranges() -> None:
    assert refused_address(ipaddress.ip_address("100.100.100.200"), ALLOW_LOOPBACK)
    assert refused_address(ipaddress.ip_address("2002:a9fe:a9fe::1"), ALLOW_LOOPBACK)
