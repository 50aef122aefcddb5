"""Fault injection: real worker processes killed with SIGKILL, then the invariants checked."""
