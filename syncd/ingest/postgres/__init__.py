"""The PostgreSQL source: a database followed through a logical replication slot (pgoutput)."""

from syncd.ingest.postgres.source import PostgresSource

__all__ = ["PostgresSource"]
