"""Release load tests: Locust gRPC suites that gate on p95 latency, error rate and cost per 1k inferences.

* :mod:`cvserve.loadtests.settings` - :class:`LoadTestSettings`, every setting of a load test, defined once
  (``cvserve loadtest``'s flags and the suite's Locust options are derived from it).
* :mod:`cvserve.loadtests.runner` - :func:`run_loadtest`, the programmatic entry point (runs Locust in
  child processes, scrapes Triton's metrics, writes the report, evaluates the gates).
* ``loadtests/locustfile.py`` - the suite itself; ``locust -f loadtests/locustfile.py`` works as usual.
* :mod:`cvserve.loadtests.users` - the abstract gRPC ``User`` on :mod:`cvserve.client`.

Importing this package imports nothing heavy; Locust (which monkey-patches the process with gevent) is
only ever imported inside the Locust processes.
"""
