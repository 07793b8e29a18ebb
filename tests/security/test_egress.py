"""The egress guard: which addresses a request to the customer's endpoints may reach, and the
guarded client against real servers on loopback (plain and TLS), with names resolved through
the guard's resolver seam (a table the test controls, as a DNS server would answer)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from metrics.registry import EGRESS_REFUSED
from security.egress import (
    EgressPolicy,
    EgressRefused,
    Reason,
    SystemResolver,
    classify,
    endpoint_problems,
    literal_refusal,
)
from security.egress_http import egress_client
from tests.agents.endpoint import Answer, Endpoint
from tests.conftest import UNIT
from tests.resolver import TableResolver

PRODUCTION = EgressPolicy.for_mode(production=True)
DEVELOPMENT = EgressPolicy.for_mode(production=False)
PUBLIC = "93.184.215.14"  # a global unicast address; never connected to


def refused_count(target: str, reason: str):
    return EGRESS_REFUSED.labels(target, reason)._value.get()


@pytest.fixture
async def endpoint():
    server = Endpoint()
    await server.start()
    yield server
    await server.stop()


# -- the policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", Reason.LOOPBACK),
        ("127.8.9.10", Reason.LOOPBACK),
        ("::1", Reason.LOOPBACK),
        ("::ffff:127.0.0.1", Reason.LOOPBACK),
        ("10.1.2.3", Reason.PRIVATE),
        ("172.16.0.1", Reason.PRIVATE),
        ("192.168.1.1", Reason.PRIVATE),
        ("100.64.0.1", Reason.PRIVATE),
        ("::ffff:10.0.0.1", Reason.PRIVATE),
        ("64:ff9b::a00:1", Reason.PRIVATE),  # NAT64 of 10.0.0.1
        ("2002:a00:1::1", Reason.PRIVATE),  # 6to4 of 10.0.0.1
        ("169.254.169.254", Reason.METADATA),
        ("::ffff:169.254.169.254", Reason.METADATA),
        ("fd00:ec2::254", Reason.METADATA),
        ("169.254.1.1", Reason.LINK_LOCAL),
        ("fe80::1", Reason.LINK_LOCAL),
        ("fd00::1", Reason.UNIQUE_LOCAL),
        ("fc00::1", Reason.UNIQUE_LOCAL),
        ("224.0.0.1", Reason.MULTICAST),
        ("ff02::1", Reason.MULTICAST),
        ("0.0.0.0", Reason.UNSPECIFIED),  # noqa: S104 (an address to refuse, not to bind)
        ("::", Reason.UNSPECIFIED),
        ("255.255.255.255", Reason.RESERVED),
        ("192.0.2.1", Reason.RESERVED),
        ("2001:db8::1", Reason.RESERVED),
        ("::a00:1", Reason.RESERVED),  # IPv4-compatible
    ],
)
def test_special_addresses_are_refused(address, reason):
    ip = ipaddress.ip_address(address)
    assert classify(ip) is reason
    assert PRODUCTION.refusal(ip) is reason


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_global_addresses_pass(address):
    assert PRODUCTION.refusal(ipaddress.ip_address(address)) is None


def test_development_allows_loopback_only():
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert DEVELOPMENT.refusal(ipaddress.ip_address(address)) is None
    for address in ("10.0.0.1", "169.254.169.254", "fd00::1"):
        assert DEVELOPMENT.refusal(ipaddress.ip_address(address)) is not None


def test_listed_networks_are_allowed_except_unspecified_and_multicast():
    policy = EgressPolicy.for_mode(
        True,
        [ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("0.0.0.0/0")],
    )
    assert policy.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("0.0.0.0")) is Reason.UNSPECIFIED  # noqa: S104
    assert policy.refusal(ipaddress.ip_address("224.0.0.1")) is Reason.MULTICAST
    narrow = EgressPolicy.for_mode(True, [ipaddress.ip_network("10.20.0.0/16")])
    assert narrow.refusal(ipaddress.ip_address("10.21.0.1")) is Reason.PRIVATE


def test_literal_refusal_reads_the_url():
    assert literal_refusal(PRODUCTION, "http://hooks.example.com/x") == (
        Reason.CLEARTEXT,
        "hooks.example.com",
    )
    assert literal_refusal(PRODUCTION, "https://[::1]:8443/x?token=s") == (Reason.LOOPBACK, "::1")
    assert literal_refusal(PRODUCTION, "https://169.254.169.254/latest") == (
        Reason.METADATA,
        "169.254.169.254",
    )
    assert literal_refusal(PRODUCTION, "https://hooks.example.com/x") is None  # a name: resolve
    assert literal_refusal(DEVELOPMENT, "http://127.0.0.1:9/x") is None


async def test_start_up_check_resolves_names_and_tolerates_no_answer():
    resolver = TableResolver(hooks_example_test=PUBLIC, inner_example_test=f"{PUBLIC},10.0.0.7")
    problems, unresolved = await endpoint_problems(
        PRODUCTION,
        [
            ("agents.a.tools.ok", "https://hooks.example.test/t"),
            ("agents.a.tools.inner", "https://inner.example.test/t"),
            ("agents.a.tools.meta", "https://169.254.169.254/t"),
            ("VOICEGW_EVENTS_URL", "https://gone.example.test/e"),
        ],
        resolver,
        timeout_s=UNIT,
    )
    assert len(problems) == 2
    assert problems[0].startswith("agents.a.tools.inner: inner.example.test resolves to 10.0.0.7")
    assert problems[1].startswith("agents.a.tools.meta: 169.254.169.254 is a metadata address")
    assert unresolved == ["VOICEGW_EVENTS_URL"]


async def test_the_system_resolver_resolves_localhost():
    # /etc/hosts: no DNS server needed.
    problems, unresolved = await endpoint_problems(
        PRODUCTION, [("tool", "https://localhost/t")], SystemResolver(), timeout_s=5 * UNIT
    )
    assert unresolved == []
    assert len(problems) == 1
    assert "loopback address" in problems[0]


# -- the guarded client against loopback servers ----------------------------------------------


async def post(client: httpx.AsyncClient, url: str) -> httpx.Response:
    async with asyncio.timeout(5 * UNIT):
        return await client.post(url, content=b"{}")


async def test_development_reaches_loopback(endpoint):
    async with egress_client(DEVELOPMENT, target="tool") as client:
        assert (await post(client, endpoint.url)).status_code == 200
    assert len(endpoint.requests) == 1


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("169.254.169.254", "metadata"),
        ("[::1]", "loopback"),
        ("[fd00::1]", "unique_local"),
        ("[::ffff:127.0.0.1]", "loopback"),
    ],
)
async def test_refused_literals_send_nothing(endpoint, host, reason):
    port = endpoint.url.split(":")[2].split("/")[0]
    policy = EgressPolicy(https_only=False)  # production's addresses, plain http for the test
    before = refused_count("tool", reason)
    async with egress_client(policy, target="tool") as client:
        with pytest.raises(EgressRefused) as refused:
            await post(client, f"http://{host}:{port}/tools?key=secret")
    assert refused.value.reason == reason
    assert refused_count("tool", reason) == before + 1
    assert endpoint.requests == []


@pytest.mark.parametrize(
    "answer", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fd00::1", "::ffff:127.0.0.1"]
)
async def test_refused_names_send_nothing(endpoint, answer, caplog):
    port = endpoint.url.split(":")[2].split("/")[0]
    resolver = TableResolver(hooks_example_test=answer)
    async with egress_client(
        EgressPolicy(https_only=False), target="events", resolver=resolver
    ) as client:
        with pytest.raises(EgressRefused):
            await post(client, f"http://hooks.example.test:{port}/e?sig=topsecret")
    assert endpoint.requests == []
    assert resolver.asked == ["hooks.example.test"]
    assert "hooks.example.test" in caplog.text
    assert "topsecret" not in caplog.text and "/e" not in caplog.text


async def test_one_refused_answer_among_good_ones_refuses(endpoint):
    port = endpoint.url.split(":")[2].split("/")[0]
    resolver = TableResolver(hooks_example_test="127.0.0.1,10.0.0.9")
    policy = EgressPolicy.for_mode(False)  # loopback allowed, 10/8 not
    async with egress_client(policy, target="tool", resolver=resolver) as client:
        with pytest.raises(EgressRefused):
            await post(client, f"http://hooks.example.test:{port}/tools")
    assert endpoint.requests == []


async def test_a_dns_answer_that_changes_after_start_up_is_refused(endpoint):
    """Start-up saw a public address; by request time the name points at loopback."""
    port = endpoint.url.split(":")[2].split("/")[0]
    url = f"http://hooks.example.test:{port}/tools"
    resolver = TableResolver(hooks_example_test=PUBLIC)
    policy = EgressPolicy(https_only=False)
    assert await endpoint_problems(policy, [("tool", url)], resolver, timeout_s=UNIT) == ([], [])
    resolver.answers["hooks.example.test"] = "127.0.0.1"
    async with egress_client(policy, target="tool", resolver=resolver) as client:
        with pytest.raises(EgressRefused) as refused:
            await post(client, url)
    assert refused.value.reason is Reason.LOOPBACK
    assert endpoint.requests == []


async def test_the_connection_goes_to_the_checked_address(endpoint):
    """The name resolves once per connection, to an allowed address, and the request carries
    the name in its Host header."""
    port = endpoint.url.split(":")[2].split("/")[0]
    resolver = TableResolver(hooks_example_test="127.0.0.1")
    policy = EgressPolicy.for_mode(True, [ipaddress.ip_network("127.0.0.1/32")])
    policy = EgressPolicy(policy.allowed, https_only=False)
    async with egress_client(policy, target="tool", resolver=resolver) as client:
        assert (await post(client, f"http://hooks.example.test:{port}/tools")).status_code == 200
    assert endpoint.requests[0].headers["host"] == f"hooks.example.test:{port}"
    assert resolver.asked == ["hooks.example.test"]


async def test_redirects_are_not_followed(endpoint):
    endpoint.answer = Answer(status=302, body=b"", headers={"location": "http://10.0.0.1/"})
    async with egress_client(DEVELOPMENT, target="tool") as client:
        assert (await post(client, endpoint.url)).status_code == 302
    assert len(endpoint.requests) == 1


async def test_production_refuses_plain_http(endpoint):
    before = refused_count("events", "cleartext")
    policy = EgressPolicy.for_mode(True, [ipaddress.ip_network("127.0.0.0/8")])
    async with egress_client(policy, target="events") as client:
        with pytest.raises(EgressRefused):
            await post(client, endpoint.url)
    assert refused_count("events", "cleartext") == before + 1
    assert endpoint.requests == []


async def test_an_unresolvable_name_is_a_connect_error():
    async with egress_client(DEVELOPMENT, target="tool", resolver=TableResolver()) as client:
        with pytest.raises(httpx.ConnectError):
            await post(client, "http://nowhere.example.test/tools")


# -- TLS: verified against the name while connecting to the checked address --------------------


def _certificates(name: str) -> tuple[bytes, bytes, bytes]:
    """A CA, and a leaf for ``name`` signed by it: (CA PEM, leaf PEM, leaf key PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voicegw test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        ca.public_bytes(pem),
        leaf.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@pytest.fixture
async def tls_endpoint(tmp_path):
    ca_pem, leaf_pem, key_pem = _certificates("hooks.example.test")
    (tmp_path / "leaf.pem").write_bytes(leaf_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
    names: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    server = Endpoint()
    server._server = await asyncio.start_server(  # the endpoint's handler, over TLS
        server._serve, "127.0.0.1", 0, ssl=server_context
    )
    client_context = ssl.create_default_context(cadata=ca_pem.decode())
    yield server, client_context, names
    await server.stop()


async def test_tls_verifies_the_name_at_the_checked_address(tls_endpoint):
    server, client_context, names = tls_endpoint
    port = server.url.split(":")[2].split("/")[0]
    resolver = TableResolver(hooks_example_test="127.0.0.1")
    policy = EgressPolicy.for_mode(True, [ipaddress.ip_network("127.0.0.1/32")])
    async with egress_client(
        policy, target="tool", resolver=resolver, verify=client_context
    ) as client:
        response = await post(client, f"https://hooks.example.test:{port}/tools")
        assert response.status_code == 200
        # The same server by address: its certificate does not name it.
        with pytest.raises(httpx.ConnectError):
            await post(client, f"https://127.0.0.1:{port}/tools")
    assert names[0] == "hooks.example.test"
    assert server.requests[0].headers["host"] == f"hooks.example.test:{port}"
    assert len(server.requests) == 1
