"""How a REST or gRPC peer is read for `auth.admin_addresses` (the e2e tests only reach
the node from 127.0.0.1)."""

import pytest

from aiserving.api.auth import Forbidden, Guard


@pytest.mark.parametrize("peer", ["ipv4:10.1.2.3:4711", "10.1.2.3", "::ffff:10.1.2.3",
                                  "ipv6:[::ffff:10.1.2.3]:4711", "ipv6:%5Bfd00::7%5D:1",
                                  "unix:/run/aisrv.sock"])
def test_peers_inside_the_list_pass(peer):
    Guard("", "", ["10.0.0.0/8", "fd00::/8", "127.0.0.1"]).check_address(peer)


@pytest.mark.parametrize("peer", ["ipv4:11.1.2.3:4711", "ipv6:[::1]:80", "fe80::1%eth0",
                                  "unix:", "", None, "garbage"])
def test_peers_outside_the_list_are_forbidden(peer):
    with pytest.raises(Forbidden, match="auth.admin_addresses"):
        Guard("", "", ["10.0.0.0/8"]).check_address(peer)


def test_an_empty_list_checks_nothing():
    Guard("", "", []).check_address("ipv4:203.0.113.9:1")
