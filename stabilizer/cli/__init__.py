"""``python -m stabilizer [options] COMMAND``: inspect a cluster and act on its clients.

Reads: ``nodes`` (live nodes, deadlines, client counts), ``clients [--limit N]``,
``groups``, ``locate ID``, ``stats``, and ``watch [--interval S] [--count N]`` (a
refreshing view of the nodes and of the rates seen between polls; Ctrl-C quits, status 0).
Acts, through ``stabilizer.Emitter`` exactly as a replica would: ``send ID MESSAGE``,
``broadcast MESSAGE``, ``kick ID`` or ``kick --user USER_ID`` (``--code N --reason R``).

Redis is named by ``--redis-url`` in any form the replicas accept (``redis://``,
``rediss://``, ``unix://``, ``redis+sentinel://host:port[,host:port]/service[/db]``; a
Cluster node's URL with ``--cluster``). Settings not given as options (namespace,
presence buckets, history) are read from the ``STABILIZER_*`` variables the replicas read.
Tables by default, ``--json`` for machines.

Exit status: 0 done; 1 nobody to act on (``locate``, ``send``, ``kick``: no replica holds
the client or user; ``broadcast``: no replica listening); 2 bad arguments, settings, URL,
client id or close code (one line on stderr); 3 Redis unreachable (one line on stderr);
130 a one-shot command interrupted by Ctrl-C.
"""

from stabilizer.cli.main import main

__all__ = ["main"]
