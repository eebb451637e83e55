"""Plinth's kernel: infrastructure shared by every service, never business logic."""
