"""The audit service: a complete, append-only, hash-chained trail of what happened."""
