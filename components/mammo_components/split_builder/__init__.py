"""Split builder component: the fixed patient-level split of a dataset (``entrypoint.run``)."""
