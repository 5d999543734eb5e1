"""This node's sockets: a Connection (state machine, bounded outbox, writer) and the Pool."""
