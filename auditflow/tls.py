"""TLS for the gRPC servers, the REST port and the gateway's link to the processor.

A server given a certificate and key serves TLS on every port it has; with a client CA it
also requires a client certificate signed by it (mutual TLS). Without a certificate it serves
plaintext, which is allowed only on a loopback address unless explicitly asked for (and then
with a warning): a bearer token must not cross a network in the clear.

Certificates are re-read on SIGHUP (`ServerTls.reload`): gRPC asks for the current
certificate before each new handshake (`dynamic_ssl_server_credentials`) and the REST port's
`SSLContext` loads the new chain in place, so connections made after the reload use it and
open ones keep theirs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from auditflow.config import ConfigError, adder, boolean

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (host without a port)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(target: str) -> str:
    """The host of a "host:port" target (also "[::1]:port" and "dns:///host:port")."""
    rest = target.split("///", 1)[-1]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class TlsFiles:
    """A server's certificate chain and key, and the CA its clients' certificates must chain to."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TlsFiles:
        """From the flags `add_flags` defined (a server without --tls-client-ca has none)."""
        return cls(args.tls_cert, args.tls_key, getattr(args, "tls_client_ca", ""))

    def check(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.client_ca_file and not self.cert_file:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")


def add_flags(parser: argparse.ArgumentParser, service: str, *, client_ca: bool) -> None:
    """--tls-cert/--tls-key (every port of the server), --tls-client-ca, --allow-plaintext."""
    add = adder(parser, service)
    add(
        "--tls-cert",
        default="",
        help="PEM certificate chain: serve TLS on every port (re-read on SIGHUP)",
    )
    add("--tls-key", default="", help="PEM private key of --tls-cert")
    if client_ca:
        add(
            "--tls-client-ca",
            default="",
            help="CA client certificates must chain to: mutual TLS, a certificate required of all",
        )
    add(
        "--allow-plaintext",
        default=False,
        type=boolean,
        help="allow plaintext on a non-loopback address (credentials then cross the network in the clear)",
    )


def check_plaintext(what: str, host: str, encrypted: bool, allow_plaintext: bool) -> None:
    """Refuse plaintext off loopback unless allowed; warn when allowed."""
    if encrypted or is_loopback(host):
        return
    if not allow_plaintext:
        raise ConfigError(
            f"{what} on {host} would be plaintext: configure TLS, use a loopback address, "
            "or pass --allow-plaintext on a network you trust"
        )
    logger.warning(
        "%s on %s serves PLAINTEXT (--allow-plaintext): credentials cross the network in the clear", what, host
    )


class ServerTls:
    """A server's TLS material, reloadable; `grpc_credentials()` and `ssl_context()` use it."""

    def __init__(self, files: TlsFiles) -> None:
        files.check()
        self.files = files
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._chain, self._key, self._ca = self._load()
        self._contexts: list[ssl.SSLContext] = []

    def _load(self) -> tuple[bytes, bytes, bytes | None]:
        chain = _read(self.files.cert_file, "TLS certificate")
        key = _read(self.files.key_file, "TLS key")
        ca = _read(self.files.client_ca_file, "client CA") if self.files.client_ca_file else None
        try:  # fail now, with the file names, rather than at the first handshake
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.files.cert_file, self.files.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"the TLS certificate {self.files.cert_file} and key do not load: {exc}") from None
        return chain, key, ca

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self._key, self._chain)], root_certificates=self._ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch,  # type: ignore[arg-type]  # (gRPC documents None as "no change")
            require_client_authentication=self._ca is not None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before each new handshake: hand over a reloaded certificate once.
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.files.cert_file, self.files.key_file)
        self._contexts.append(context)
        return context

    def reload(self) -> None:
        """Re-read the files (blocking). A broken file keeps the certificate in use."""
        try:
            loaded = self._load()
        except ConfigError as exc:
            logger.error("TLS reload failed, keeping the current certificate: %s", exc)
            return
        with self._lock:
            self._chain, self._key, self._ca = loaded
            self._pending = self._configuration()
        for context in self._contexts:
            context.load_cert_chain(self.files.cert_file, self.files.key_file)
        logger.info("reloaded the TLS certificate %s", self.files.cert_file)


@dataclass(frozen=True)
class ClientTls:
    """How a client reaches a TLS server: the CA to trust (empty: the system's), a client
    certificate for mutual TLS, and the name to expect in the server's certificate."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file or self.cert_file)

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("a client certificate and its key go together")
        ca = _read(self.ca_file, "CA certificate") if self.ca_file else None
        key = _read(self.key_file, "client key") if self.key_file else None
        chain = _read(self.cert_file, "client certificate") if self.cert_file else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
