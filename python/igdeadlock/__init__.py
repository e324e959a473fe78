"""igdeadlock: deadlock reports from Inspektor Gadget's lock-order tracing gadget."""

__version__ = "0.1.0"
