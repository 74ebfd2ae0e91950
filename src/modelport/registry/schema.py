"""The metadata schema. Every change here comes with an Alembic migration in ``migrations/``;
a test checks that the migrations build exactly this schema.

Tables are declared with SQLAlchemy Core, not the ORM: the registry reads and writes rows
with plain statements, and importing the ORM would add ~60 ms to every CLI command.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "aliases",
    "api_keys",
    "audit_log",
    "blob_keys",
    "dataset_aliases",
    "dataset_files",
    "dataset_tags",
    "dataset_versions",
    "datasets",
    "files",
    "metadata",
    "models",
    "retired_models",
    "tags",
    "versions",
]

NAME_LENGTH = 128
DIGEST_LENGTH = 64

# Stable constraint names make migrations portable across SQLite and PostgreSQL.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

models = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(NAME_LENGTH), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Numbers are never reused, even after the newest version is deleted: `iris@4` must
    # never name two different models over time.
    Column("last_version", Integer, nullable=False, default=0),
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("model_id", ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("format", String(64), nullable=False),
    Column("entry", Text, nullable=False),
    Column("signature", JSON, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("trust_pickle", Boolean, nullable=False, default=False),
    Column("metrics", JSON, nullable=False, default=dict),
    Column("parent_id", ForeignKey("versions.id", ondelete="SET NULL"), nullable=True),
    Column("operation", String(64), nullable=True),
    Column("parameters", JSON, nullable=False, default=dict),
    Column("metadata", JSON, nullable=False, default=dict, server_default="{}"),
    UniqueConstraint("model_id", "number"),
)

files = Table(
    "files",
    metadata,
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("digest", String(DIGEST_LENGTH), nullable=False),
    Column("size", BigInteger, nullable=False),
    Index("ix_files_digest", "digest"),
)

aliases = Table(
    "aliases",
    metadata,
    Column("model_id", ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(NAME_LENGTH), primary_key=True),
    # No cascade: a version with an alias on it is only deleted on purpose (--force).
    Column("version_id", ForeignKey("versions.id"), nullable=False, index=True),
)

tags = Table(
    "tags",
    metadata,
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(NAME_LENGTH), primary_key=True),
    Column("value", Text, nullable=False),
)

# A model deleted as a whole leaves its name and last number here, so that pushing the name
# again goes on from that number: `iris@4` must never name two different models over time.
# The row goes back into `models` when the name is pushed again.
retired_models = Table(
    "retired_models",
    metadata,
    Column("name", String(NAME_LENGTH), primary_key=True),
    Column("last_version", Integer, nullable=False),
)

# Datasets live beside models, in their own tables (their versions carry a schema, splits and
# a profile instead of a signature), and their files in the same blob store: gc reads
# `dataset_files` too. A dataset row is never deleted, so its numbers are never reused.
datasets = Table(
    "datasets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(NAME_LENGTH), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_version", Integer, nullable=False, default=0),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("dataset_id", ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("format", String(64), nullable=False),
    Column("digest", String(DIGEST_LENGTH), nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("label", String(NAME_LENGTH), nullable=True),
    Column("columns", JSON, nullable=False),
    Column("splits", JSON, nullable=False, default=dict),
    Column("split_method", JSON, nullable=False, default=dict),
    Column("profile", JSON, nullable=False, default=dict),
    Column("source", Text, nullable=False, default=""),
    Column("license", Text, nullable=False, default=""),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("parent_id", ForeignKey("dataset_versions.id", ondelete="SET NULL"), nullable=True),
    Column("operation", String(64), nullable=True),
    Column("parameters", JSON, nullable=False, default=dict),
    UniqueConstraint("dataset_id", "number"),
)

dataset_files = Table(
    "dataset_files",
    metadata,
    Column("version_id", ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("digest", String(DIGEST_LENGTH), nullable=False),
    Column("size", BigInteger, nullable=False),
    Index("ix_dataset_files_digest", "digest"),
)

dataset_aliases = Table(
    "dataset_aliases",
    metadata,
    Column("dataset_id", ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(NAME_LENGTH), primary_key=True),
    Column("version_id", ForeignKey("dataset_versions.id"), nullable=False, index=True),
)

dataset_tags = Table(
    "dataset_tags",
    metadata,
    Column("version_id", ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(NAME_LENGTH), primary_key=True),
    Column("value", Text, nullable=False),
)


# Security (keys, audit, encryption at rest). A key's secret is never stored: only its sha256
# (keys are 256-bit random, so a slow hash buys nothing), found by the public ``key_id`` that
# every key starts with. A revoked key keeps its row, so the audit log can still name it.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key_id", String(32), nullable=False, unique=True),
    Column("name", String(NAME_LENGTH), nullable=False, unique=True),
    Column("secret_hash", String(DIGEST_LENGTH), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("models", JSON, nullable=False, default=list),
    Column("rate", String(32), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(NAME_LENGTH), nullable=False, default=""),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Append-only; each entry's ``hash`` covers its own fields and the ``prev_hash`` of the entry
# before it, so an edited or deleted entry breaks the chain (``modelport audit verify``).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(NAME_LENGTH), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False, default=""),
    Column("address", String(128), nullable=True),
    Column("outcome", String(32), nullable=False),
    Column("detail", JSON, nullable=False, default=dict),
    Column("prev_hash", String(DIGEST_LENGTH), nullable=False),
    Column("hash", String(DIGEST_LENGTH), nullable=False),
)

# Encryption at rest: each blob's data key, wrapped (encrypted) by a master key. Kept here,
# not in the blob, so that rotating the master key re-wraps rows and never rewrites blobs.
blob_keys = Table(
    "blob_keys",
    metadata,
    Column("digest", String(DIGEST_LENGTH), primary_key=True),
    Column("wrapped_key", Text, nullable=False),
    Column("master_key_id", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
