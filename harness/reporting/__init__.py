"""Reports from what MLflow holds: ``report`` (entry points), ``gather``, ``tables``, ``figures``,
``document``, ``render`` and ``text``; ``results`` writes docs/results.md from the committed reports."""
