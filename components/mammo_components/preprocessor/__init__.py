"""Preprocessor: DICOM mammograms in storage to the PNG dataset the pipeline reads (see README.md)."""
