"""Inspektor Gadget: its gadget service (gRPC), event stream, datasource decoding,
daemon and Kubernetes transport. Knows nothing about deadlocks."""
