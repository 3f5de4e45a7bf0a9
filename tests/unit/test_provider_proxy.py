"""A provider's proxy comes from the environment as curl reads it (HTTPS_PROXY,
HTTP_PROXY, NO_PROXY), looked up once when the provider is made."""

from __future__ import annotations

import ssl

import pytest

from surge.llm.provider import Provider, env_proxy, tls_context


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_no_proxy_in_the_environment_means_a_direct_connection() -> None:
    assert env_proxy("https://api.openai.com/v1") is None


def test_the_proxy_for_the_providers_scheme_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.internal:3128"
    assert env_proxy("http://vllm.internal:8000/v1") is None  # no HTTP_PROXY set
    provider = Provider("openai", "https://api.openai.com/v1")
    assert provider.proxy == "http://proxy.internal:3128"


def test_no_proxy_exempts_its_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "vllm.internal,.cluster.local")
    assert env_proxy("http://vllm.internal:8000/v1") is None
    assert env_proxy("http://tgi.ns.cluster.local/v1") is None
    assert env_proxy("http://elsewhere.example/v1") == "http://proxy.internal:3128"


def test_tls_trusts_certifis_bundle_unless_the_environment_names_certificates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import certifi

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    default = tls_context()
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    assert default.cert_store_stats()["x509_ca"] > 50  # certifi's roots, not an empty store
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert tls_context().cert_store_stats()["x509_ca"] == default.cert_store_stats()["x509_ca"]
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    with pytest.raises(FileNotFoundError):  # a wrong path fails the start, not a request
        Provider("openai", "https://api.openai.com/v1")
    Provider("local", "http://127.0.0.1:8000/v1")  # plain HTTP needs no certificates
