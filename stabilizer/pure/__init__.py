"""Pure code: codecs, schedules and rules with no I/O, no asyncio and the clock passed in.

Plain calls test everything here; an import-linter contract keeps asyncio, sockets and the
network libraries out.
"""
