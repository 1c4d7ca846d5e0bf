"""The probes behind ``feature_matrix.py``, one module per library (one column of the
table): each module has ``NAME``, ``available()`` (``None``, or why the library cannot run
here) and one probe per row, named as ``feature_matrix.FEATURES`` lists them, returning a
:class:`._probe.Cell`. ``_probe.py`` holds what the probes share."""
