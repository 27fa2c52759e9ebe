"""The write path and its proof: the one ingest script, the mirror that feeds it, the entry
schema, where a migration starts, and validation that re-reads both sides."""
