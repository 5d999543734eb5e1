"""Users and authentication (issue 11): ``python -m bench.identity``.

Two scenarios, each measured side by side with a raw FastAPI floor in the same run:

* ``connect`` (``bench/identity/connect.py``): the time from a client's TCP connect to its
  first frame, the rate of a burst of connects and the server CPU per connect, for a raw
  endpoint that sends one frame, ``session`` as a plain client (welcome frame), protocol v2
  (connect frame), v2 with an HS256 JWT and v2 with an RS256 JWT;
* ``user`` (``bench/identity/users.py``): ``send_to_user`` against ``send_to_client`` across
  three uvicorn replicas on one redis-server, every user holding one connection on each.

``common.py`` holds the run's sizes and the plumbing both share; ``__main__.py`` the
command line and the report. See BENCHMARKS.md, "Users and authentication (issue 11)".
"""
