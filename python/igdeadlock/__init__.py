"""igdeadlock: deadlock reports from Inspektor Gadget's lock-order tracing gadget."""

__version__ = "0.1.0"

import os as _os

# The gadget image the companion runs unless told otherwise.
DEFAULT_IMAGE = _os.environ.get("IGDEADLOCK_IMAGE", "localhost/igdeadlock:latest")
