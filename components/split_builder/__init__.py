"""Split builder component: the fixed patient-level split of a dataset (``entrypoint.run``)."""

from mammo_components.spec import DATASET, ComponentSpec, Flag

SPEC = ComponentSpec(
    help="Build (or reuse) the fixed patient-level split of a dataset.",
    description="Reads <dataset>/train.csv, validates it and writes split.csv/split.json to "
    "<store>/splits/<dataset-fingerprint>/; a dataset split before is reused, a grown one "
    "keeps every earlier patient in its split.",
    flags=(DATASET, Flag("--store", "store_uri", "URI", "Storage root, e.g. s3://mammo.")),
)
