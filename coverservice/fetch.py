"""Safe download of a screenshot URL (``pic_full_url`` of a CSS callback).

The URL comes from a request anyone can send, so every download is treated as
untrusted: the URL must name an allowed host, the address it resolves to is checked
when the connection is made (a check before resolving again is defeated by DNS
rebinding), and size and time are capped.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Self

import httpcore
import httpx

from .errors import FetchError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .settings import Settings

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A last label like this makes the host an address to socket.getaddrinfo
# ("2130706433", "127.1", "0x7f.1"), whatever it looks like to a reader.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_CARRIER_GRADE_NAT = ipaddress.IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# Set by Fetcher.fetch for the thread running the download and read by the network
# stream on every read and write: httpx's timeouts are per operation, so a server
# sending a byte every half second (in the headers or the body) would never trip them.
_deadline: ContextVar[float | None] = ContextVar("coverservice_fetch_deadline", default=None)


# --- URLs ------------------------------------------------------------------------------


def host_allowed(host: str, port: int, patterns: Sequence[str]) -> bool:
    """Whether ``host:port`` matches one of ``patterns``: ``host``, ``*.domain`` (sub-domains
    only) or ``[v6]``, with ``:port`` or ``:*``; without a port, 80 and 443 only. An IP
    address matches only a pattern naming that address."""
    host = _normalise_host(host)
    address = _ip_or_none(host)
    for pattern in patterns:
        pattern_host, ports = _parse_pattern(pattern)
        if ports is not None and port not in ports:
            continue
        if address is not None:
            if _ip_or_none(pattern_host) == address:
                return True
        elif pattern_host.startswith("*."):
            suffix = pattern_host[1:]
            label = host[: -len(suffix)]
            if host.endswith(suffix) and label and not label.endswith("."):
                return True
        elif host == pattern_host:
            return True
    return False


def check_url(url: str, patterns: Sequence[str]) -> httpx.URL:
    """Parse ``url`` strictly and check its host against ``patterns``; the returned URL has
    the host lower-cased and without a trailing dot. Raises a permanent FetchError."""
    if len(url) > MAX_URL_LENGTH:
        raise _refused(f"URL is longer than {MAX_URL_LENGTH} characters")
    if "\\" in url:
        raise _refused("URL contains a backslash")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise _refused("URL contains whitespace or control characters")
    match = _SCHEME.match(url)
    if match is None:
        raise _refused("URL has no scheme")
    scheme = match[1].lower()
    if scheme not in DEFAULT_PORTS:
        raise _refused(f"scheme {_short(scheme)!r} is not allowed, only http and https")
    rest = url[match.end() :]
    if not rest.startswith("//"):
        raise _refused("URL has no host")
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    # Refused even when empty: "allowed.host@evil.host" reads as the first host and
    # connects to the second.
    if "@" in authority:
        raise _refused("URL carries user info (user@host), which is not allowed")
    host, port = _split_authority(authority)
    address = _ip_or_none(host)
    where = f"[{host}]" if isinstance(address, ipaddress.IPv6Address) else host
    if port is not None:
        where += f":{port}"
    if port in DEFAULT_PORTS.values() and port != DEFAULT_PORTS[scheme]:
        # host_allowed lets a pattern without a port match 80 and 443 alike
        raise _refused(f"URL has an odd port: {scheme} on {port}")
    effective_port = port or DEFAULT_PORTS[scheme]
    if not host_allowed(host, effective_port, patterns):
        raise FetchError(f"host {where} is not allowed", transient=False, host=where,
                         setting="COVERSERVICE_FETCH_ALLOWED_HOSTS")

    # httpx parses the URL again to send it; refuse what the two parsers read differently.
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise _refused(f"URL for host {where} is not valid") from None
    parsed_host = _normalise_host(parsed.host)
    same_host = parsed_host == host if address is None else _ip_or_none(parsed_host) == address
    same_port = (parsed.port or DEFAULT_PORTS[scheme]) == effective_port
    if not (same_host and same_port) or parsed.userinfo or parsed.scheme != scheme:
        raise _refused(f"URL for host {where} is ambiguous")
    # Without the trailing dot: it is what certificates name and what SNI sends.
    return parsed.copy_with(host=host)


def _split_authority(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        end = authority.find("]")
        host, tail = (authority[1:end], authority[end + 1 :]) if end > 0 else ("", "")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _refused(f"host [{_short(host)}] is not a valid IPv6 address") from None
    else:
        host, colon, port_text = authority.partition(":")
        tail = colon + port_text
    port: int | None = None
    if tail:
        port_text = tail[1:]
        # Strict: httpx would read ":0080" and ":+80" as port 80.
        if not tail.startswith(":") or not _PORT.fullmatch(port_text) or int(port_text) > 65535:
            raise _refused(f"URL has a bad port {_short(port_text)!r}")
        port = int(port_text)

    host = _normalise_host(host)
    if not host:
        raise _refused("URL has no host")
    if ":" in host:
        return host, port  # the IPv6 literal checked above
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _refused(f"host {_short(host)} is not a valid IPv4 address") from None
    elif len(host) > 253 or not _HOST_NAME.fullmatch(host):
        raise _refused(f"host {_short(host)} is not a valid host name")
    return host, port


def _parse_pattern(pattern: str) -> tuple[str, frozenset[int] | None]:
    """``(host, ports)``; ports None means any port."""
    text = pattern.strip().lower()
    if text.startswith("[") and "]" in text:
        host, tail = text[1:].split("]", 1)
    else:
        host, colon, port = text.partition(":")
        tail = colon + port
    if tail == "":
        ports: frozenset[int] | None = frozenset(DEFAULT_PORTS.values())
    elif tail == ":*":
        ports = None
    elif tail.startswith(":") and _PORT.fullmatch(tail[1:]):
        ports = frozenset({int(tail[1:])})
    else:
        raise ValueError(f"bad port in host pattern {pattern!r}")
    host = _normalise_host(host)
    if not host or "*" in host.removeprefix("*."):
        raise ValueError(f"bad host in host pattern {pattern!r}")
    return host, ports


def _normalise_host(host: str) -> str:
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.removesuffix(".")


def _ip_or_none(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _short(text: str) -> str:
    return text if len(text) <= 64 else text[:61] + "..."


def _refused(reason: str) -> FetchError:
    return FetchError(reason, transient=False)


# --- addresses -------------------------------------------------------------------------


def address_refusal(address: IPAddress) -> str | None:
    """Why a download may not connect to ``address``, or None if it may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_refusal(embedded)
    reasons = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address in _CARRIER_GRADE_NAT, "carrier-grade NAT"),
        (address in _UNIQUE_LOCAL, "unique-local"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "not publicly routable"),
    )
    return next((reason for refused, reason in reasons if refused), None)


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _resolve_within(resolver: Resolver, host: str, port: int, timeout: float | None) -> list[str]:
    """``resolver(host, port)``, given up after ``timeout`` seconds. getaddrinfo takes no
    timeout and a stalled DNS server holds it for the resolver's own retries (tens of
    seconds), so it runs in a daemon thread that is left to finish alone if it overruns:
    the download's total time cap holds, and the thread never delays the process's exit."""
    done = threading.Event()
    outcome: list[list[str] | BaseException] = []

    def lookup() -> None:
        try:
            outcome.append(resolver(host, port))
        except BaseException as exc:  # noqa: BLE001  (handed to the waiting thread)
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="coverservice-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise httpcore.ConnectTimeout(f"could not resolve {host} within {timeout:g}s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _remaining(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _remaining(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _remaining(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # httpcore passes the URL's host name here, not the address we connected to, so
        # SNI and certificate checks are for the name.
        timeout = _remaining(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves the host itself, refuses non-public addresses, and connects to the
    address it checked, so the name is never resolved a second time."""

    def __init__(self, resolver: Resolver, allow_private: bool) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception | None = None
        for address in self._addresses(host, port, _remaining(timeout, httpcore.ConnectTimeout)):
            try:
                stream = self._backend.connect_tcp(
                    str(address),
                    port,
                    timeout=_remaining(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream)
        assert error is not None
        raise error

    def _addresses(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        literal = _ip_or_none(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                found = _resolve_within(self._resolver, host, port, timeout)
                addresses = [ipaddress.ip_address(a) for a in found]
            except (OSError, ValueError) as exc:
                raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
            if not addresses:
                raise httpcore.ConnectError(f"could not resolve {host}")
        if not self._allow_private:
            # One bad address refuses them all: an attacker controlling the zone can
            # otherwise order the records so the private one is tried.
            for address in addresses:
                reason = address_refusal(address)
                if reason is not None:
                    source = "" if literal is not None else f", resolved from {host}"
                    # Raised as is through httpcore and httpx, which map only their own errors.
                    raise FetchError(
                        f"address {address} is not allowed ({reason}){source}", transient=False,
                        host=host, setting="COVERSERVICE_FETCH_ALLOW_PRIVATE",
                    )
        return addresses

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, backend: httpcore.NetworkBackend, max_connections: int) -> None:
        ssl_context = httpx.create_ssl_context()
        super().__init__(verify=ssl_context)
        # HTTPTransport takes no network backend, so its (still idle) pool is replaced by
        # one that connects through ours; httpx's request and error mapping stay in use.
        # If httpx renames _pool, the address tests fail rather than pass silently.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


# --- refusals the operator can lift -----------------------------------------------------


class RefusalLog:
    """A warning for each download refused by configuration, naming the host and the
    variable to change: otherwise the callback is acknowledged, the frame fails quietly
    and the cover never appears. At most one line per host per ``interval`` seconds, and
    ``max_hosts`` hosts per interval (a flood of made-up hosts cannot flood the log)."""

    def __init__(self, allowed_hosts: Sequence[str], *, interval: float = 300.0, max_hosts: int = 100,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._allowed = ",".join(allowed_hosts) or "(empty)"
        self._interval = interval
        self._max_hosts = max_hosts
        self._clock = clock
        self._warned: dict[str, float] = {}
        self._lock = threading.Lock()

    def warn(self, error: FetchError) -> None:
        if error.host is None or error.setting is None:
            return
        now = self._clock()
        with self._lock:
            last = self._warned.get(error.host)
            if last is not None and now - last < self._interval:
                return
            if last is None and len(self._warned) >= self._max_hosts:
                self._warned = {h: t for h, t in self._warned.items() if now - t < self._interval}
                if len(self._warned) >= self._max_hosts:
                    return
            self._warned[error.host] = now
        if error.setting == "COVERSERVICE_FETCH_ALLOWED_HOSTS":
            fix = (f"if it is your screenshot bucket or its CDN, add {_short(error.host)} to "
                   f"COVERSERVICE_FETCH_ALLOWED_HOSTS (now {self._allowed})")
        else:
            fix = (f"only for a stand-in on your own network (tests, demos) set {error.setting}=true: "
                   "it lets anyone who can send a callback make the workers connect to internal addresses")
        log.warning("download refused, the screenshot will not become a cover: %s; %s "
                    "(refusals for this host are logged once per %g s)", error, fix, self._interval)


# --- downloads -------------------------------------------------------------------------


class Fetcher:
    def __init__(
        self,
        *,
        allowed_hosts: Sequence[str],
        allow_private: bool = False,
        max_bytes: int,
        timeout: float,
        connect_timeout: float,
        max_connections: int = 16,
        resolver: Resolver | None = None,
    ) -> None:
        for pattern in allowed_hosts:
            _parse_pattern(pattern)  # a bad pattern fails at start-up, not per frame
        self._patterns = tuple(allowed_hosts)
        self._refusals = RefusalLog(self._patterns)
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._client = httpx.Client(
            transport=_GuardedTransport(
                _GuardedBackend(resolver or _system_resolver, allow_private), max_connections
            ),
            # An HTTP(S)_PROXY from the environment would connect on our behalf, past
            # the address check. (httpx ignores it anyway when given a transport.)
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            # identity: the byte cap is on what we hold, and a compressed body could
            # expand far past it inside one decompression call.
            headers={
                "Accept": "image/*",
                "Accept-Encoding": "identity",
                "User-Agent": "coverservice",
            },
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Fetcher:
        return cls(
            allowed_hosts=settings.fetch_allowed_hosts,
            allow_private=settings.fetch_allow_private,
            max_bytes=settings.fetch_max_bytes,
            timeout=settings.fetch_timeout,
            connect_timeout=settings.fetch_connect_timeout,
            max_connections=settings.fetch_max_connections,
        )

    def fetch(self, url: str) -> bytes:
        try:
            return self._fetch(url)
        except FetchError as exc:
            self._refusals.warn(exc)
            raise

    def _fetch(self, url: str) -> bytes:
        target = check_url(url, self._patterns)
        # Messages name the host only: COS URLs carry signatures in the query.
        where = target.netloc.decode("ascii")
        token = _deadline.set(time.monotonic() + self._timeout)
        try:
            with self._client.stream("GET", target) as response:
                self._check_response(response, where)
                return self._read_body(response, where)
        except httpx.ConnectTimeout:
            raise FetchError(
                f"could not connect to {where} within {self._connect_timeout:g}s", transient=True
            ) from None
        except httpx.TimeoutException:
            raise FetchError(
                f"download from {where} took longer than {self._timeout:g}s", transient=True
            ) from None
        except httpx.TransportError as exc:
            reason = _short(str(exc) or type(exc).__name__)
            raise FetchError(f"download from {where} failed: {reason}", transient=True) from None
        finally:
            _deadline.reset(token)

    def _check_response(self, response: httpx.Response, where: str) -> None:
        status = response.status_code
        if 300 <= status < 400:
            try:
                to = httpx.URL(response.headers.get("location", "")).host or "the same host"
            except httpx.InvalidURL:
                to = "an invalid location"
            raise FetchError(
                f"redirect not followed ({status} from {where} to {_short(to)})", transient=False
            )
        if status != 200:
            reason = httpx.codes.get_reason_phrase(status)
            raise FetchError(
                f"{where} answered {status} {reason}".rstrip(),
                transient=status == 429 or status >= 500,
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchError(
                f"{where} sent a {_short(encoding)}-encoded body, only identity is accepted",
                transient=False,
            )
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_bytes:
            raise FetchError(
                f"screenshot from {where} is larger than {self._max_bytes} bytes "
                f"(Content-Length {int(length)})",
                transient=False,
            )

    def _read_body(self, response: httpx.Response, where: str) -> bytes:
        body = bytearray()
        # Raw bytes: Content-Length may lie or be absent, so the cap is on what arrives.
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > self._max_bytes:
                raise FetchError(
                    f"screenshot from {where} is larger than {self._max_bytes} bytes",
                    transient=False,
                )
        if not body:
            raise FetchError(f"{where} sent an empty body", transient=False)
        return bytes(body)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
