"""Backends: the state shared by all nodes, as role protocols (base.py) with an in-process
implementation (memory/) and a Redis one (redis/)."""
