"""identity: who exists — users, their status and their passwords."""
