from __future__ import annotations

import datetime
import gzip
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.cos_server import CosServer

from coverservice.errors import FetchError
from coverservice.fetch import Fetcher, RefusalLog, check_url, host_allowed
from coverservice.settings import Settings

SHOT = bytes(range(256)) * 40  # 10 KiB; fetch does not look inside
PATTERNS = (
    "*.myqcloud.com",
    "cos.example.com",
    "stand-in.test:8080",
    "any-port.test:*",
    "127.0.0.1:9000",
)

MakeFetcher = Callable[..., Fetcher]


class StaticResolver:
    """Answers from a table, as DNS under the attacker's control would; records calls."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


@pytest.fixture
def cos() -> Iterator[CosServer]:
    with CosServer() as server:
        yield server


@pytest.fixture
def make_fetcher() -> Iterator[MakeFetcher]:
    """Fetchers for cos.test (resolving to the loopback server) and 127.0.0.1, any port,
    private addresses allowed; keyword arguments override."""
    fetchers: list[Fetcher] = []

    def make(**overrides: Any) -> Fetcher:
        options: dict[str, Any] = {
            "allowed_hosts": ("cos.test:*", "127.0.0.1:*"),
            "allow_private": True,
            "max_bytes": 1_000_000,
            "timeout": 2.0,
            "connect_timeout": 1.0,
            "resolver": StaticResolver({"cos.test": ["127.0.0.1"]}),
        }
        options.update(overrides)
        fetcher = Fetcher(**options)
        fetchers.append(fetcher)
        return fetcher

    yield make
    for fetcher in fetchers:
        fetcher.close()


def fetch_error(fetcher: Fetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(url)
    return caught.value


# --- host patterns and URLs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("b-125.cos.ap-guangzhou.myqcloud.com", 443, True),
        ("b.myqcloud.com", 80, True),
        ("B.MyQcloud.COM.", 443, True),
        ("myqcloud.com", 443, False),  # *.domain is sub-domains only
        ("myqcloud.com.evil.com", 443, False),
        ("evilmyqcloud.com", 443, False),
        (".myqcloud.com", 443, False),
        ("cos.example.com", 443, True),
        ("x.cos.example.com", 443, False),
        ("cos.example.com", 8080, False),  # no port in the pattern: 80 and 443 only
        ("stand-in.test", 8080, True),
        ("stand-in.test", 443, False),
        ("any-port.test", 1234, True),
        ("127.0.0.1", 9000, True),
        ("127.0.0.1", 9001, False),
        ("127.0.0.2", 9000, False),
    ],
)
def test_host_allowed(host: str, port: int, allowed: bool) -> None:
    assert host_allowed(host, port, PATTERNS) is allowed


def test_wildcards_never_match_addresses() -> None:
    assert not host_allowed("10.0.0.1", 443, ["*.0.0.1"])
    assert host_allowed("10.0.0.1", 443, ["10.0.0.1"])


def test_bad_pattern_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="bad port"):
        Fetcher(allowed_hosts=["cos.test:http"], max_bytes=1, timeout=1, connect_timeout=1)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://user@b.myqcloud.com/s.jpg", "user info"),
        ("http://b.myqcloud.com@evil.com/s.jpg", "user info"),
        ("http://b.myqcloud.com:pw@evil.com/s.jpg", "user info"),
        ("http://@b.myqcloud.com/s.jpg", "user info"),
        ("http://myqcloud.com.evil.com/s.jpg", "host myqcloud.com.evil.com is not allowed"),
        ("http://evilmyqcloud.com/s.jpg", "host evilmyqcloud.com is not allowed"),
        ("ftp://b.myqcloud.com/s.jpg", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://b.myqcloud.com:70/_GET", "scheme 'gopher' is not allowed"),
        ("b.myqcloud.com/s.jpg", "no scheme"),
        ("http:///s.jpg", "no host"),
        ("http:b.myqcloud.com/s.jpg", "no host"),
        ("http://b.myqcloud.com:8080/s.jpg", "host b.myqcloud.com:8080 is not allowed"),
        ("http://b.myqcloud.com:0/s.jpg", "bad port"),
        ("http://b.myqcloud.com:0080/s.jpg", "bad port"),
        ("http://b.myqcloud.com:+80/s.jpg", "bad port"),
        ("http://b.myqcloud.com:99999/s.jpg", "bad port"),
        ("http://b.myqcloud.com:/s.jpg", "bad port"),
        ("http://b.myqcloud.com:443/s.jpg", "odd port"),
        ("http://b.myqcloud.com\\@evil.com/s.jpg", "backslash"),
        ("http:\\\\b.myqcloud.com/s.jpg", "backslash"),
        ("http://b.myqcloud.com/a b.jpg", "whitespace or control"),
        ("http://b.myqcloud.com/s.jpg\r\nX-Injected: 1", "whitespace or control"),
        ("http://b.myqcloud.com/s.jpg\x00", "whitespace or control"),
        (" http://b.myqcloud.com/s.jpg", "whitespace or control"),
        ("http://b.myqcloud.com/" + "a" * 2048, "longer than 2048"),
        ("http://127.0.0.1/s.jpg", "host 127.0.0.1 is not allowed"),
        ("http://[::1]:9000/s.jpg", "host [::1]:9000 is not allowed"),
        ("http://2130706433:9000/s.jpg", "not a valid IPv4 address"),
        ("http://127.1:9000/s.jpg", "not a valid IPv4 address"),
        ("http://0x7f.0.0.1:9000/s.jpg", "not a valid IPv4 address"),
        ("http://b.myqcloud.com%2e.evil.com/s.jpg", "not a valid host name"),
        ("http://b\uff0emyqcloud.com/s.jpg", "not a valid host name"),  # fullwidth dot
    ],
)
def test_check_url_refuses(url: str, reason: str) -> None:
    with pytest.raises(FetchError, match=re.escape(reason)) as caught:
        check_url(url, PATTERNS)
    assert caught.value.transient is False


@pytest.mark.parametrize(
    ("url", "checked"),
    [
        (
            "HTTPS://B.Cos.AP-Guangzhou.MyQcloud.COM./live/s.jpg?sign=q%2Fx&t=1",
            "https://b.cos.ap-guangzhou.myqcloud.com/live/s.jpg?sign=q%2Fx&t=1",
        ),
        ("http://b.myqcloud.com:80/s.jpg", "http://b.myqcloud.com/s.jpg"),
        ("http://127.0.0.1:9000/s.jpg", "http://127.0.0.1:9000/s.jpg"),
        ("http://stand-in.test:8080/s.jpg", "http://stand-in.test:8080/s.jpg"),
    ],
)
def test_check_url_accepts_and_normalises(url: str, checked: str) -> None:
    assert str(check_url(url, PATTERNS)) == checked


def test_refusal_does_not_repeat_the_query() -> None:
    with pytest.raises(FetchError) as caught:
        check_url("http://evil.com/s.jpg?sign=SECRET", PATTERNS)
    assert "SECRET" not in str(caught.value)


# --- downloads ----------------------------------------------------------------------------


def test_downloads_screenshot_from_the_address_it_checked(
    cos: CosServer, make_fetcher: MakeFetcher
) -> None:
    cos.put("/live/s.jpg", SHOT)
    resolver = StaticResolver({"cos.test": ["127.0.0.1"]})
    fetcher = make_fetcher(resolver=resolver)

    # cos.test exists in no real DNS: only connecting to the resolver's answer works.
    assert fetcher.fetch(cos.url("/live/s.jpg?sign=abc&t=1", host="cos.test")) == SHOT
    assert fetcher.fetch(cos.url("/live/s.jpg", host="cos.test")) == SHOT

    assert cos.targets == ["/live/s.jpg?sign=abc&t=1", "/live/s.jpg"]
    # Anything but identity could expand past the byte cap inside the decompressor.
    assert cos.headers[0]["accept-encoding"] == "identity"
    assert resolver.calls == [("cos.test", cos.port)]
    assert cos.connections == 1  # pooled


def test_from_settings(cos: CosServer) -> None:
    cos.put("/s.jpg", SHOT)
    url = cos.url("/s.jpg")
    settings = Settings(fetch_allowed_hosts=("127.0.0.1:*",), fetch_allow_private=True)
    with Fetcher.from_settings(settings) as fetcher:
        assert fetcher.fetch(url) == SHOT
    with Fetcher.from_settings(Settings(fetch_allowed_hosts=("127.0.0.1:*",))) as fetcher:
        assert "loopback" in str(fetch_error(fetcher, url))


# --- addresses ----------------------------------------------------------------------------


def test_refuses_loopback_without_connecting(cos: CosServer, make_fetcher: MakeFetcher) -> None:
    cos.put("/s.jpg", SHOT)
    error = fetch_error(make_fetcher(allow_private=False), cos.url("/s.jpg"))

    assert str(error) == "address 127.0.0.1 is not allowed (loopback)"
    assert error.transient is False
    assert cos.connections == 0


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("fc00::1", "unique-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_refuses_name_resolving_to_non_public_address(
    cos: CosServer, make_fetcher: MakeFetcher, address: str, reason: str
) -> None:
    cos.put("/s.jpg", SHOT)
    fetcher = make_fetcher(allow_private=False, resolver=StaticResolver({"cos.test": [address]}))
    error = fetch_error(fetcher, cos.url("/s.jpg", host="cos.test"))

    shown = ipaddress.ip_address(address)
    assert str(error) == f"address {shown} is not allowed ({reason}), resolved from cos.test"
    assert error.transient is False
    assert cos.connections == 0


def test_one_non_public_address_refuses_the_name(cos: CosServer, make_fetcher: MakeFetcher) -> None:
    # The public address comes first and is never tried (nor anything else).
    resolver = StaticResolver({"cos.test": ["2001:4860:4860::8888", "127.0.0.1"]})
    fetcher = make_fetcher(allow_private=False, resolver=resolver)
    error = fetch_error(fetcher, cos.url("/s.jpg", host="cos.test"))
    assert str(error) == "address 127.0.0.1 is not allowed (loopback), resolved from cos.test"
    assert cos.connections == 0


def test_allow_private_admits_loopback(cos: CosServer, make_fetcher: MakeFetcher) -> None:
    cos.put("/s.jpg", SHOT)
    fetcher = make_fetcher(allow_private=True)
    assert fetcher.fetch(cos.url("/s.jpg", host="cos.test")) == SHOT
    assert fetcher.fetch(cos.url("/s.jpg")) == SHOT


def test_unresolvable_name_is_transient(make_fetcher: MakeFetcher) -> None:
    error = fetch_error(make_fetcher(resolver=StaticResolver({})), "http://cos.test:9/s.jpg")
    assert "could not resolve cos.test" in str(error)
    assert error.transient is True


def test_proxy_from_environment_is_not_used(
    cos: CosServer, make_fetcher: MakeFetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CosServer() as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.url(""))
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        fetcher = make_fetcher(allow_private=False)

        error = fetch_error(fetcher, cos.url("/s.jpg", host="cos.test"))

        assert "address 127.0.0.1 is not allowed (loopback)" in str(error)
        assert proxy.connections == 0


# --- responses ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307])
def test_redirect_is_not_followed(cos: CosServer, make_fetcher: MakeFetcher, status: int) -> None:
    cos.put("/target.jpg", SHOT)
    cos.redirect("/s.jpg", cos.url("/target.jpg?sign=SECRET", host="cos.test"), status)

    error = fetch_error(make_fetcher(), cos.url("/s.jpg", host="cos.test"))

    assert str(error) == f"redirect not followed ({status} from cos.test:{cos.port} to cos.test)"
    assert error.transient is False
    assert cos.requests["/target.jpg"] == 0


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (403, False), (404, False), (410, False), (204, False)]
    + [(429, True), (500, True), (502, True), (503, True)],
)
def test_status_other_than_200(
    cos: CosServer, make_fetcher: MakeFetcher, status: int, transient: bool
) -> None:
    cos.put("/s.jpg", b"an error page", "text/html", status=status)

    error = fetch_error(make_fetcher(), cos.url("/s.jpg?sign=SECRET", host="cos.test"))

    assert str(error).startswith(f"cos.test:{cos.port} answered {status} ")
    assert "SECRET" not in str(error)
    assert error.transient is transient


def test_empty_body_is_refused(cos: CosServer, make_fetcher: MakeFetcher) -> None:
    cos.put("/s.jpg", b"")
    error = fetch_error(make_fetcher(), cos.url("/s.jpg", host="cos.test"))
    assert str(error) == f"cos.test:{cos.port} sent an empty body"
    assert error.transient is False


def test_encoded_body_is_refused(cos: CosServer, make_fetcher: MakeFetcher) -> None:
    cos.put("/s.jpg", gzip.compress(SHOT), headers={"Content-Encoding": "gzip"})
    error = fetch_error(make_fetcher(), cos.url("/s.jpg", host="cos.test"))
    assert "gzip-encoded body" in str(error)
    assert error.transient is False


def test_connection_refused_is_transient(make_fetcher: MakeFetcher) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    error = fetch_error(make_fetcher(), f"http://cos.test:{port}/s.jpg?sign=SECRET")
    assert str(error).startswith(f"download from cos.test:{port} failed: ")
    assert "SECRET" not in str(error)
    assert error.transient is True


def test_body_cut_short_is_transient(cos: CosServer, make_fetcher: MakeFetcher) -> None:
    cos.put("/s.jpg", SHOT, framing="close", content_length=len(SHOT) * 2)
    error = fetch_error(make_fetcher(), cos.url("/s.jpg", host="cos.test"))
    assert str(error).startswith(f"download from cos.test:{cos.port} failed: ")
    assert error.transient is True


# --- caps ---------------------------------------------------------------------------------


def test_body_of_exactly_max_bytes_is_accepted(cos: CosServer, make_fetcher: MakeFetcher) -> None:
    cos.put("/s.jpg", SHOT)
    assert make_fetcher(max_bytes=len(SHOT)).fetch(cos.url("/s.jpg", host="cos.test")) == SHOT


def test_declared_length_over_cap_is_refused_before_reading(
    cos: CosServer, make_fetcher: MakeFetcher
) -> None:
    # The body drips for minutes: only the header can make the refusal this quick.
    cos.put("/s.jpg", SHOT, drip=0.1)
    fetcher = make_fetcher(max_bytes=1000, timeout=5.0)
    started = time.monotonic()

    error = fetch_error(fetcher, cos.url("/s.jpg", host="cos.test"))

    assert time.monotonic() - started < 2.0
    assert str(error) == (
        f"screenshot from cos.test:{cos.port} is larger than 1000 bytes "
        f"(Content-Length {len(SHOT)})"
    )
    assert error.transient is False


@pytest.mark.parametrize(
    ("framing", "content_length"),
    [("chunked", None), ("close", None), ("chunked", 10)],
    ids=["chunked", "no-length", "lying-length"],
)
def test_body_over_cap_is_cut_off_while_streaming(
    cos: CosServer, make_fetcher: MakeFetcher, framing: Any, content_length: int | None
) -> None:
    # After the body the server holds the response open: reading to the end first and
    # checking the size afterwards would hit the deadline instead.
    cos.put("/s.jpg", SHOT, framing=framing, content_length=content_length, stall=5.0)
    fetcher = make_fetcher(max_bytes=1000, timeout=1.0)

    error = fetch_error(fetcher, cos.url("/s.jpg", host="cos.test"))

    assert str(error) == f"screenshot from cos.test:{cos.port} is larger than 1000 bytes"
    assert error.transient is False


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body", "headers"])
def test_slow_drip_hits_the_deadline(
    cos: CosServer, make_fetcher: MakeFetcher, drip_headers: bool
) -> None:
    # A byte every 50 ms never trips a per-read timeout; the whole takes 2 s or more.
    cos.put("/s.jpg", SHOT[:40], drip=0.05, drip_headers=drip_headers)
    fetcher = make_fetcher(timeout=0.5)
    started = time.monotonic()

    error = fetch_error(fetcher, cos.url("/s.jpg", host="cos.test"))

    assert 0.5 <= time.monotonic() - started < 1.5
    assert str(error) == f"download from cos.test:{cos.port} took longer than 0.5s"
    assert error.transient is True


# --- TLS ----------------------------------------------------------------------------------


def _certificate_authority(tmp_path: Path, server_name: str) -> tuple[Path, ssl.SSLContext]:
    """A CA file for clients and a server context whose certificate names only
    ``server_name`` (no IP address), signed by that CA."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(hours=1))

    def issue(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue("coverservice test CA", ca_key, None, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(server_name, key, ca_cert.subject, ca_key, False)

    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain = tmp_path / "server.pem"
    chain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return ca_file, context


@pytest.mark.parametrize(("certified", "works"), [("cos.test", True), ("other.test", False)])
def test_tls_checks_the_host_name_while_connecting_to_the_address(
    make_fetcher: MakeFetcher,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    certified: str,
    works: bool,
) -> None:
    ca_file, server_context = _certificate_authority(tmp_path, certified)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # read by httpx.create_ssl_context
    with CosServer(ssl_context=server_context) as cos:
        cos.put("/s.jpg", SHOT)
        fetcher = make_fetcher()
        url = cos.url("/s.jpg", host="cos.test")
        if works:
            assert fetcher.fetch(url) == SHOT
        else:
            error = fetch_error(fetcher, url)
            assert "certificate verify failed" in str(error)
            assert cos.total_requests == 0


# --- refusals the operator can lift -------------------------------------------------------


def test_refusals_are_logged_once_per_host_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(("*.myqcloud.com",), interval=60, max_hosts=2, clock=lambda: now[0])

    def refuse(url: str) -> None:
        with pytest.raises(FetchError) as caught:
            check_url(url, ("*.myqcloud.com",))
        refusals.warn(caught.value)

    with caplog.at_level("WARNING", logger="coverservice.fetch"):
        refuse("https://cdn.example.com/a.jpg")
        refuse("https://cdn.example.com/b.jpg")
        refuse("https://user@cdn.example.com/c.jpg")  # the URL's fault, not the configuration's
        assert len(caplog.records) == 1
        message = caplog.records[0].getMessage()
        assert "cdn.example.com" in message and "COVERSERVICE_FETCH_ALLOWED_HOSTS (now *.myqcloud.com)" in message
        refuse("https://two.example.com/a.jpg")
        refuse("https://three.example.com/a.jpg")  # over max_hosts in this interval: dropped
        assert len(caplog.records) == 2
        now[0] = 61
        refuse("https://cdn.example.com/d.jpg")
        refuse("https://three.example.com/a.jpg")
        assert len(caplog.records) == 4


def test_a_private_address_refusal_names_its_setting(caplog: pytest.LogCaptureFixture) -> None:
    fetcher = Fetcher(allowed_hosts=("internal.test",), max_bytes=1000, timeout=2, connect_timeout=1,
                      resolver=lambda host, port: ["10.0.0.7"])
    with fetcher, caplog.at_level("WARNING"), pytest.raises(FetchError):
        fetcher.fetch("http://internal.test/a.jpg")
    (record,) = [r for r in caplog.records if r.name == "coverservice.fetch"]
    assert "internal.test" in record.getMessage() and "COVERSERVICE_FETCH_ALLOW_PRIVATE=true" in record.getMessage()
