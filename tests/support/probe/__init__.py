"""probe: a minimal service built on the kernel, used by the kernel's own tests."""
