"""The services of a node, one concern each, wired together by the manager (the facade).

Each receives the NodeContext and the services it uses, never the manager: events ->
liveness -> delivery (groups, fan-out, routers, listener) -> closing -> memory -> tokens ->
admission -> resume -> maintenance -> lifecycle.
"""
