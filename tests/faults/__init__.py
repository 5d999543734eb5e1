"""A randomized fault checker: seeded schedules of client operations and faults against real
replicas and Redis, judged against the invariants once the cluster is quiet (issue 16)."""
