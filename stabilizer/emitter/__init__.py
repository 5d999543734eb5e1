"""Publish-only access to a running cluster from any process: a Celery or arq worker, a cron
job, an admin service. An emitter holds no socket and registers nothing (no presence, no
heartbeat, no node entry); it writes the envelopes and runs the scripts a replica would.

``Emitter`` is asynchronous; ``SyncEmitter`` runs one on a private event loop thread for
blocking code.
"""

from stabilizer.emitter.emitter import Emitter
from stabilizer.emitter.sync import SyncEmitter

__all__ = ["Emitter", "SyncEmitter"]
