"""Preprocessor: DICOM mammograms in storage to the PNG dataset the pipeline reads (see README.md)."""

from mammo_components.spec import ComponentSpec

#: Flags of its own (``cli``): the conversion options of ``mammo data dicom`` plus shards.
SPEC = ComponentSpec(
    help="Convert DICOMs in storage to the PNG dataset the pipeline reads (all, one shard, or merge).",
    cli="mammo_components.preprocessor.cli",
)
