"""Watch what the served model sees and answers: signals, a reference per version, drift.

- :mod:`cvserve.monitor.signals`: the signals and every metric name and bucket edge (copied next to the
  served model; numpy and the standard library only).
- :mod:`cvserve.monitor.reference`: a version's reference, counted at build time on held-out images.
- :mod:`cvserve.monitor.drift`: a live window against the reference, one test per signal.
- :mod:`cvserve.monitor.prometheus`: the live window, read from Prometheus.
- :mod:`cvserve.monitor.watch`: ``cvserve monitor`` as a library function, and the ``cvserve_drift_*`` gauges.
- :mod:`cvserve.monitor.calibrate`: false alarms and detections of the tests, offline.

docs/monitoring.md explains the whole.
"""
