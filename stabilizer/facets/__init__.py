"""The facade's concerns, one mixin each, so ``WebSocketConnectionManager`` stays a list of
one-line delegations: groups, cluster-wide queries, users."""
