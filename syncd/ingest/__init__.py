"""The ingest role, ``syncd-ingest``: provisioning and data sync between systems of record and
syncd's staging databases (docs/ARCHITECTURE.md, "Ingest role (issue 13)")."""
