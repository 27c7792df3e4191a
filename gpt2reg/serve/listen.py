"""The listening socket and the HTTP protocol at the edge: what a server exposed to others needs.

``listen`` binds the socket before anything loads, so a bad ``--host`` or a port in use is one line
that says what to do (not uvicorn's ``[Errno 98]``, nor an abort while a model library initialises),
and says whether the address reaches beyond this machine. ``http_protocol`` is uvicorn's h11 protocol
with a deadline on the request head: a client that opens a connection and sends its headers a byte at
a time (or never) is disconnected after ``timeout`` seconds; the body's deadline is the app's.
Headers are limited to ``MAX_HEADER_BYTES`` by h11 (a larger head is a 400 and one log line).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import InputError

MAX_HEADER_BYTES = 16 * 1024

log = logging.getLogger("gpt2reg.serve")


@dataclass
class Listener:
    sock: socket.socket
    url: str  # http://host:port as a client would write it
    local_only: bool  # loopback: nobody beyond this machine can connect


def listen(host: str, port: int) -> Listener:
    """A TCP socket bound to ``host:port`` (not yet listening); ``InputError`` with the fix when it cannot be."""
    if not host.strip():
        raise InputError("--host is empty: give the address to listen on (127.0.0.1: this machine only; "
                         "0.0.0.0: every interface)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror:
        try:  # a name with IPv6 addresses only
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise InputError(f"--host {host}: no such address ({exc.strerror}); give one of this machine's "
                             "addresses or a name that resolves to one (127.0.0.1, 0.0.0.0)") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(_bind_error(exc, host, port)) from None
    bound_host, bound_port = sock.getsockname()[:2]
    ip = ipaddress.ip_address(bound_host)
    shown = f"[{bound_host}]" if ip.version == 6 else bound_host
    return Listener(sock, f"http://{shown}:{bound_port}", ip.is_loopback)


def _bind_error(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use by another program: stop it, or choose another "
                "--port (--port 0 picks a free one)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"--host {host} is not an address of this machine: give one of its own (127.0.0.1 for this "
                "machine only, 0.0.0.0 for every interface)")
    if exc.errno == errno.EACCES:
        return f"no permission to listen on port {port} (ports below 1024 need root): choose --port 1024 or above"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def http_protocol(timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head takes more than ``timeout`` seconds."""

    class DeadlineH11Protocol(H11Protocol):
        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            self._head_deadline = self.loop.call_later(timeout, self._head_late)

        def _head_late(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self.conn.trailing_data[0]:  # part of a head arrived: a slow client, not an idle keep-alive
                    prefix = f"client {self.client[0]}:{self.client[1]}" if self.client else "a client"
                    log.warning("%s took more than %g s to send its request headers; dropped", prefix, timeout)
                self.transport.close()

    return DeadlineH11Protocol
