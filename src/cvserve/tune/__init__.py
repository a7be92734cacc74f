"""``cvserve tune``: a serving-configuration tuner bound by a p95 SLO that minimises cost per 1k inferences.

* :mod:`cvserve.tune.settings` - :class:`TuneSettings`, from which ``cvserve tune``'s flags are derived.
* :mod:`cvserve.tune.models` - which models serve NAME (single or ensemble layout), read from the configs.
* :mod:`cvserve.tune.candidates` - the knobs, the search space, the batch bound and the thread budget.
* :mod:`cvserve.tune.apply` - live apply/restore through Triton's explicit model-control API.
* :mod:`cvserve.tune.measure` - the ``Measure`` protocol, the load-generator measurement, operating points.
* :mod:`cvserve.tune.search` - noise-aware coordinate descent within a time budget.
* :mod:`cvserve.tune.report` - tuning_report.json/.md, the Pareto plot, config.pbtxt and Helm values.

Importing this package imports nothing heavy.
"""
