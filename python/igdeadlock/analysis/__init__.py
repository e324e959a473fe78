"""Lock-order and wait-for analysis, and what a target reported: pure, no gRPC, no host access."""
