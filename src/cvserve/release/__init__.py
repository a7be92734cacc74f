"""``cvserve release``: decide go/no-go for a candidate version of a served model, then roll it out.

The stages, one module each:

* :mod:`~cvserve.release.golden`: read and validate a golden set (images + ``labels.csv`` with slices).
* :mod:`~cvserve.release.versions`: the two versions in the model repository (layout, labels, build facts).
* :mod:`~cvserve.release.shadow`: serve them under shadow names so production traffic never reaches the
  candidate while it is being judged.
* :mod:`~cvserve.release.compare`: classify the golden set with each, per slice.
* :mod:`~cvserve.release.measure`: the release load test of each (``cvserve loadtest``, steady).
* :mod:`~cvserve.release.gates`: the go/no-go decision.
* :mod:`~cvserve.release.report`: release_report.json/.md, plots and MODEL_CARD.md.
* :mod:`~cvserve.release.promote`: pin a version in the repository atomically and switch a live server.
* :mod:`~cvserve.release.pipeline`: the only orchestrator; :mod:`~cvserve.release.cli` the command.
"""
