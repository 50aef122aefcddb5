"""The tasks `waitpoint dev` and `waitpoint worker` run by default (every module in here)."""
