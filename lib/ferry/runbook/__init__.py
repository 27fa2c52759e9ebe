"""The runbook: its steps as data, running them with Papermill, what the notebooks share, the
evidence (gates, charts, Data Docs), the audit archive, and sizing."""
