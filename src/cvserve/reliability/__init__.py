"""``make reliability``: what cvserve does under hostile input, overload, rollouts, kills and stops.

``python -m cvserve.reliability`` builds the demo MobileNetV2 (or takes ``--repository``), serves a copy
with ``cvserve serve`` (explicit model control, the supervisor on) and runs, in order:

* R1 :func:`~cvserve.reliability.scenarios.r1_hostile`: >= 2,000 bad requests of every kind in
  :func:`~cvserve.reliability.payloads.kinds` mixed with good ones at concurrency 8;
* R2 :func:`~cvserve.reliability.scenarios.r2_overload`: 4x the saturating load for 20 s, then back;
* R3 :func:`~cvserve.reliability.scenarios.r3_rollout`: a version rollout and rollback under load;
* R4 :func:`~cvserve.reliability.scenarios.r4_kill`: kill -9 of Triton under load, client retries;
* R5 :func:`~cvserve.reliability.scenarios.r5_sigterm`: SIGTERM to ``cvserve serve`` under load.

It prints a Markdown report (the Reliability section of docs/benchmarks.md keeps the figures) and writes
it with the raw figures as JSON under ``--output``. A script, not a test: it asserts nothing, it measures.
"""
