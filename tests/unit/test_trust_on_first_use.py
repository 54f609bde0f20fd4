"""``TrustOnFirstUse``: the plain-HTTP client's TLS context reads the CA store only at its first
handshake, and is otherwise the context ``ssl.create_default_context()`` makes (the oracle)."""

from __future__ import annotations

import socket
import ssl

from lcow.registry.client import TrustOnFirstUse, _ssl_context


def test_it_trusts_nothing_until_its_first_handshake_then_the_system_store() -> None:
    lazy, reference = TrustOnFirstUse(), ssl.create_default_context()
    assert lazy.cert_store_stats()["x509_ca"] == 0
    assert lazy.verify_mode == ssl.CERT_REQUIRED and lazy.check_hostname  # fails closed
    mine, theirs = socket.socketpair()
    try:
        wrapped = lazy.wrap_socket(mine, server_hostname="registry.example",
                                   do_handshake_on_connect=False)  # fmt: skip
        wrapped.close()
    finally:
        theirs.close()
    assert lazy.cert_store_stats() == reference.cert_store_stats()


def test_it_verifies_as_the_default_context_does() -> None:
    lazy, reference = TrustOnFirstUse(), ssl.create_default_context()
    for attribute in ("verify_mode", "check_hostname", "verify_flags", "options",
                      "minimum_version", "maximum_version", "protocol"):  # fmt: skip
        assert getattr(lazy, attribute) == getattr(reference, attribute), attribute


def test_only_plain_http_without_a_ca_file_defers_the_store() -> None:
    assert isinstance(_ssl_context(None, plain_http=True), TrustOnFirstUse)
    eager = _ssl_context(None, plain_http=False)
    assert not isinstance(eager, TrustOnFirstUse)
    assert eager.cert_store_stats() == ssl.create_default_context().cert_store_stats()
