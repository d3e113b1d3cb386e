"""Outbound HTTP of event deliveries: one session per sending thread (keep-alive to receivers),
no proxies from the environment, and, unless private addresses are allowed, a connection whose
peer is not a public address is closed before a byte is sent. That check is made on the socket
actually connected, so a name that resolves to a public address when the URL is checked and to
a private one when connecting (DNS rebinding) is refused too."""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

_local = threading.local()


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


if TYPE_CHECKING:
    _ConnectionBase = HTTPConnection
else:
    _ConnectionBase = object


class _PublicPeerOnly(_ConnectionBase):
    """Mixed into urllib3's connections (their `_new_conn` opens the socket)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        peer = sock.getpeername()[0]
        if not address_is_public(peer):
            sock.close()
            raise NewConnectionError(self, f"refused: {peer} is not a public address")
        return sock


class _PublicHTTPConnection(_PublicPeerOnly, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicPeerOnly, HTTPSConnection):
    pass


class _PublicHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class PublicOnlyAdapter(HTTPAdapter):
    """Connects to public addresses only."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _PublicHTTPConnectionPool,
            "https": _PublicHTTPSConnectionPool,
        }


def delivery_session(*, private_allowed: bool) -> requests.Session:
    """This thread's session for the given policy."""
    sessions = getattr(_local, "sessions", None)
    if sessions is None:
        sessions = _local.sessions = {}
    session = sessions.get(private_allowed)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment: we call the receiver itself
        if not private_allowed:
            adapter = PublicOnlyAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        sessions[private_allowed] = session
    return session
