"""Settings: one pydantic-settings model, read from ``MODELPORT_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelport.errors import InvalidInput

__all__ = ["Settings", "VerifyPolicy", "load_settings"]

VerifyPolicy = Literal["always", "first-load", "never"]


class Settings(BaseSettings):
    """Where modelport keeps its state and how it treats it.

    Build one at start-up (``Settings()`` reads the environment) and pass it down; nothing
    reads the environment behind the caller's back.
    """

    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".modelport",
        description="Directory for the embedded database and the local artifact store.",
    )
    db_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata DB; default sqlite:///$MODELPORT_HOME/registry.db.",
    )
    store_path: Path | None = Field(
        default=None,
        description="Local artifact store directory; default $MODELPORT_HOME/artifacts.",
    )
    store_url: str | None = Field(
        default=None,
        description="Where version files live: s3://bucket/prefix for an S3-compatible store; "
        "default: the local directory store (MODELPORT_STORE_PATH).",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of a non-AWS S3 server (MinIO, Ceph, ...); region and "
        "credentials come from the usual AWS_* variables.",
    )
    cache_path: Path | None = Field(
        default=None,
        description="Local checkout cache of a remote store; default $MODELPORT_HOME/cache.",
    )
    gc_grace: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds an unreferenced S3 object or upload is kept before gc removes "
        "it, so that gc is safe while other machines push.",
    )
    verify: VerifyPolicy = Field(
        default="always",
        description="When loading re-hashes model files against their manifest.",
    )

    # -- security and remote use (issue 12) ----------------------------------------------
    remote: str | None = Field(
        default=None,
        description="URL of a modelport server whose registry the CLI's registry commands "
        "use instead of the local one (the same as --remote).",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="API key sent as 'Authorization: Bearer ...' by Client, Registry.remote "
        "and the CLI's --remote commands.",
    )
    tls_ca: Path | None = Field(
        default=None,
        description="CA bundle (PEM) clients trust for https:// and TLS gRPC servers; default: "
        "the system's trust store.",
    )
    tls_client_cert: Path | None = Field(
        default=None,
        description="Client certificate (PEM) clients present to a server that asks for one "
        "(mTLS).",
    )
    tls_client_key: Path | None = Field(
        default=None, description="Private key (PEM) of MODELPORT_TLS_CLIENT_CERT."
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description="Master key for encryption at rest: 32 bytes, base64 (modelport "
        "encryption generate). Never logged.",
    )
    encryption_key_file: Path | None = Field(
        default=None,
        description="File holding the master key for encryption at rest (instead of "
        "MODELPORT_ENCRYPTION_KEY).",
    )
    plaintext_cache: Path | None = Field(
        default=None,
        description="With encryption at rest: a directory on disk the user allows decrypted "
        "checkouts and derived files in; default: a private memory-backed directory per "
        "process, removed when it exits (docs/encryption.md).",
    )

    def resolved_db_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{self.home.expanduser() / 'registry.db'}"

    def resolved_store_path(self) -> Path:
        return (self.store_path or self.home / "artifacts").expanduser()

    def resolved_cache_path(self) -> Path:
        return (self.cache_path or self.home / "cache").expanduser()


def load_settings() -> Settings:
    """Settings from the environment, with a one-line error naming a bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = "MODELPORT_" + "_".join(str(part) for part in first["loc"]).upper()
        raise InvalidInput(f"{variable}: {first['msg']}") from None
