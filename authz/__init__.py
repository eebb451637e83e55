"""authz: what you may do — roles, permissions, assignments and permission checks."""
