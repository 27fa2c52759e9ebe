"""The live migration: the DualWriter, phases with leases, cutover, finish, rollback and the
consumers' hand-over."""
