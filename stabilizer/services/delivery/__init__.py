"""Delivery: group membership, local fan-out, the two delivery modes and the listener."""
