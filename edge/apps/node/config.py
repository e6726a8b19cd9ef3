"""``medge node``'s settings: one frozen dataclass, checked once, and the parsing of --allow, --forward,
--forward-stow and --class-code. Secrets (the STOW-RS password or token) are never settings: ``Stow`` names the
file or environment variable that holds them and reads it at each try, so they stay off the command line, out of
``ps`` and out of logs.
"""
from __future__ import annotations

import base64
import ipaddress
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from medge.edge.config import check_ranges
from medge.edge.errors import UsageError

# DICOM AE titles: up to 16 characters of the default character repertoire, no backslash or control characters.
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def check_ae_title(text: str, what: str) -> str:
    """``text`` stripped, or UsageError naming ``what``."""
    title = text.strip()
    if not _AE.match(title):
        raise UsageError(f"{what}: {text!r} is not a DICOM AE title (1 to 16 printable characters, no backslash)")
    return title


@dataclass(frozen=True)
class Peer:
    """An allowed caller (AE title, and optionally the host it must call from) or the PACS to forward to."""

    ae_title: str
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"@{self.host}" if self.host else ""
        return f"{self.ae_title}{host}{f':{self.port}' if self.port else ''}"


def parse_allow(text: str) -> Peer:
    """``AE`` or ``AE@HOST``."""
    ae, _, host = text.partition("@")
    if "@" in text and not host:
        raise UsageError(f"--allow {text!r}: give AE or AE@HOST")
    return Peer(check_ae_title(ae, "--allow"), host or None)


def parse_forward(text: str) -> Peer:
    """``AE@HOST:PORT``, the PACS that results are sent to."""
    m = re.match(r"^([^@]+)@(\[[^\]]+\]|[^:]+):(\d+)$", text.strip())
    if not m:
        raise UsageError(f"--forward {text!r}: give the PACS as AE@HOST:PORT, e.g. ORTHANC@10.0.0.5:4242")
    port = int(m.group(3))
    if not 1 <= port <= 65535:
        raise UsageError(f"--forward {text!r}: port {port} is not in 1..65535")
    return Peer(check_ae_title(m.group(1), "--forward"), m.group(2).strip("[]"), port)


# A code's parts as DICOM holds them (PS3.3 Table 8.8-1): Coding Scheme Designator SH (16 characters), Code Value SH
# (16; up to 64 as a Long Code Value), Code Meaning LO (64); none may hold a backslash or a control character.
CODE_PARTS = (("SCHEME", 16), ("VALUE", 64), ("MEANING", 64))
_CODE_TEXT = re.compile(r"^[^\\\x00-\x1f\x7f]*$")


def parse_class_code(text: str) -> tuple[str, tuple[str, str, str]]:
    """``NAME=SCHEME:VALUE[:MEANING]``: the code of class NAME in the SR (value, designator, meaning; the meaning is
    the class name when not given). UsageError naming what is wrong."""
    name, equals, code = (part.strip() for part in text.partition("="))
    parts = [part.strip() for part in code.split(":", 2)]
    if not equals or len(parts) < 2:
        raise UsageError(f"--class-code {text!r}: give NAME=SCHEME:VALUE[:MEANING], e.g. ptx=SCT:36118008:Pneumothorax")
    scheme, value, meaning = (*parts, name)[:3]
    named = "" if len(parts) == 3 else " (the class name is the meaning when none is given)"
    if not name:
        raise UsageError(f"--class-code {text!r}: the class NAME before '=' is empty")
    if value.lower() == "urn":  # its own ':' split it: "urn" became the value, the rest the meaning
        raise UsageError(f"--class-code {text!r}: a URN code value cannot be given (':' separates the parts)")
    for (what, limit), part in zip(CODE_PARTS, (scheme, value, meaning), strict=True):
        if not part:
            raise UsageError(f"--class-code {text!r}: {what} is empty")
        if len(part) > limit:
            raise UsageError(f"--class-code {text!r}: {what} {part!r} is longer than DICOM's {limit} characters"
                             + (named if what == "MEANING" else ""))
        if not _CODE_TEXT.match(part):
            raise UsageError(f"--class-code {text!r}: {what} {part!r} holds a backslash or a control character")
    return name, (value, scheme, meaning)


def parse_class_codes(texts) -> dict[str, tuple[str, str, str]]:
    """Every --class-code, by class name; a class given twice is a UsageError."""
    codes: dict[str, tuple[str, str, str]] = {}
    for text in texts:
        name, code = parse_class_code(text)
        if name in codes:
            raise UsageError(f"--class-code {name}: given twice")
        codes[name] = code
    return codes


STOW_PASSWORD_ENV = "MEDGE_STOW_PASSWORD"  # the STOW-RS password when --stow-user is given without --stow-password-file
STOW_TIMEOUT_S = 30.0  # to connect to the DICOMweb server, and for each read or write


@dataclass(frozen=True)
class Stow:
    """A DICOMweb server that results go to by STOW-RS (``POST {url}/studies``), and how to log in to it."""

    url: str  # the DICOMweb base, e.g. https://pacs:8042/dicom-web (no credentials, query or fragment)
    user: str | None = None  # HTTP basic authentication as this user ...
    password_file: str | None = None  # ... with the password in this file (else in $MEDGE_STOW_PASSWORD)
    token_file: str | None = None  # or a bearer token in this file
    ca: str | None = None  # PEM: trust only this CA for the server's certificate (https), not the system's
    timeout_s: float = STOW_TIMEOUT_S

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--forward-stow {self.url!r}: give the DICOMweb base as http(s)://HOST[:PORT]/PATH, "
                             "e.g. http://pacs:8042/dicom-web")
        if parts.username is not None or parts.password is not None:
            raise UsageError("--forward-stow: no user or password in the URL (the command line shows in ps); "
                             f"use --stow-user with --stow-password-file or ${STOW_PASSWORD_ENV}")
        if parts.query or parts.fragment:
            raise UsageError(f"--forward-stow {self.url!r}: no query or fragment; results go to URL/studies")
        if parts.path.rstrip("/").endswith("/studies"):
            raise UsageError(f"--forward-stow {self.url!r}: give the DICOMweb base, without /studies "
                             "(results go to URL/studies)")
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:  # not a number, or above 65535
            port_ok = False
        if not port_ok:
            raise UsageError(f"--forward-stow {self.url!r}: the port is not a number in 1..65535")
        if self.user is not None and self.token_file:
            raise UsageError("--stow-user and --stow-token-file: give one (basic or bearer authentication)")
        if self.password_file and self.user is None:
            raise UsageError("--stow-password-file needs --stow-user")
        if self.ca and parts.scheme != "https":
            raise UsageError("--stow-ca is for an https:// --forward-stow URL")
        if not self.timeout_s > 0:
            raise UsageError(f"--stow-timeout must be > 0 seconds, got {self.timeout_s}")

    def __str__(self) -> str:
        return self.url

    def check_files(self) -> list[str]:
        """At start: UsageError for a --stow-ca that is no PEM certificate or a secret that is missing or empty;
        warnings (returned) for a secret file that others may read."""
        import ssl

        if self.ca:
            try:
                ssl.create_default_context(cafile=self.ca)
            except (ssl.SSLError, OSError) as e:
                raise UsageError(f"--stow-ca {self.ca}: not a PEM CA certificate ({getattr(e, 'reason', None) or e})"
                                 ) from None
        self.authorization()
        warnings = []
        for option, path in (("--stow-password-file", self.password_file), ("--stow-token-file", self.token_file)):
            if path and os.stat(path).st_mode & 0o077:
                warnings.append(f"{option} {path} may be read by other users (mode {os.stat(path).st_mode & 0o777:o}):"
                                f" chmod 600 it")
        return warnings

    @property
    def cleartext_secret(self) -> bool:
        """A password or token would cross the network unencrypted: http:// to a host that is not this machine."""
        host = urlsplit(self.url).hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        return bool(self.user is not None or self.token_file) and self.url.startswith("http://") and not loopback

    def authorization(self) -> str | None:
        """The Authorization header's value, read now (a rotated password or token is used at the next try);
        None without authentication. UsageError naming the option when the secret is missing or empty."""
        if self.token_file:
            return f"Bearer {_read_secret(self.token_file, '--stow-token-file')}"
        if self.user is None:
            return None
        if self.password_file:  # the file wins over $MEDGE_STOW_PASSWORD when both are there
            password = _read_secret(self.password_file, "--stow-password-file")
        elif os.environ.get(STOW_PASSWORD_ENV):
            password = os.environ[STOW_PASSWORD_ENV]
        else:
            raise UsageError(f"--stow-user needs a password: --stow-password-file FILE or ${STOW_PASSWORD_ENV}")
        return "Basic " + base64.b64encode(f"{self.user}:{password}".encode()).decode("ascii")


def _read_secret(path: str, option: str) -> str:
    """The file's text without its final line break; UsageError (naming the option, never the content) otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{option} {path}: cannot read it ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    if not secret:
        raise UsageError(f"{option} {path}: the file is empty")
    return secret


@dataclass(frozen=True)
class NodeConfig:
    """How ``medge node`` listens, what it keeps, and where it forwards."""

    ae_title: str = "MEDGE"  # our AE title (the called AE title PACS uses)
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 11112  # 0: any free port (printed at start)
    allow: tuple[Peer, ...] = ()  # callers allowed; empty: any
    forward: Peer | None = None  # the PACS that SR and SC objects go to by C-STORE
    stow: Stow | None = None  # the DICOMweb server they go to by STOW-RS (either, both or neither)
    heatmap_sc: bool = False  # also a Secondary Capture of the heatmap overlay per classified instance
    study_timeout_s: float = 5.0  # a study is complete after this long without a new instance (MONAI Deploy's default)
    queue: int = 64  # instances received but not yet classified; beyond this the node answers out of resources
    max_instance_mb: float = 1024.0  # larger instances are refused (out of resources); they are received to disk
    max_associations: int = 16  # at once; more are rejected (local limit exceeded)
    keep_images: bool = False  # keep spooled images (DIR/images/) after their results are safe
    strict: bool = False  # an input with warnings is skipped instead of labelled
    batch_size: int = 1  # 1: each instance's probabilities are those of `medge predict FILE`
    workers: int | None = None
    streams: int | None = None
    max_pixels: int = 40_000_000
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None  # with it, callers must present a certificate it signed (mutual TLS)
    retry_max_s: float = 60.0  # the longest wait between two tries to forward to a PACS that is down
    # --class-code: a class's code in the SR (value, designator, meaning) by class name, over report.CLASS_CODES'
    class_codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def __post_init__(self):
        check_ranges("node", [
            (0 <= self.port <= 65535, f"--port must be in 0..65535, got {self.port}"),
            (self.study_timeout_s > 0, f"--study-timeout must be > 0 seconds, got {self.study_timeout_s}"),
            (1 <= self.queue <= 100_000, f"--queue must be in 1..100000, got {self.queue}"),
            (0 < self.max_instance_mb <= 65536, f"--max-instance-mb must be in (0, 65536], got {self.max_instance_mb}"),
            (1 <= self.max_associations <= 256, f"--max-associations must be in 1..256, got {self.max_associations}"),
            (self.retry_max_s >= 1, f"retry_max_s must be >= 1, got {self.retry_max_s}"),
        ])
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UsageError("--tls-cert and --tls-key go together: give both for DICOM over TLS")
        if self.tls_ca and not self.tls_cert:
            raise UsageError("--tls-ca needs --tls-cert and --tls-key: mutual TLS is TLS with client certificates")
