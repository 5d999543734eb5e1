"""A node's shared context and the owner of its background tasks."""
