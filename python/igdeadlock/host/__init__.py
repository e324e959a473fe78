"""Host-side helpers: reading /proc, ELF files, attaching probes."""
