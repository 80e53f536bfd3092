"""DICOM mammograms to the PNG dataset the pipeline trains on (``mammo data dicom``).

- ``read``: open a file and decode its pixels (pydicom 3 with pylibjpeg-openjpeg for JPEG 2000
  and python-gdcm for JPEG lossless; uncompressed, RLE and deflated natively), every failure a
  one-line ``DicomError`` naming the file and the reason.
- ``windowing``: the modality LUT (rescale slope/intercept, or a Modality LUT Sequence), then
  the VOI LUT (WindowCenter/WindowWidth with VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID, a
  VOI LUT Sequence scaled by its nominal range as pydicom's entries, min-max when neither),
  inverted for MONOCHROME1 or PresentationLUTShape INVERSE so tissue is bright; applied as one
  lookup table over the stored values.
- ``roi``: the breast's box (Otsu threshold, largest connected component, margin; the full
  image when the mask is implausible) and the side of the chest wall.
- ``convert``: one file to one PNG at ``HxW`` (aspect kept: fit, then pad) and its record; the
  skip policy (non-image objects, tomosynthesis, FOR PROCESSING, views, spot/magnification,
  implants) read from the header before decoding.
- ``identity``: keyed pseudonyms (HMAC-SHA256, site key) for patient ids, image ids and file keys.
- ``preprocess``: a folder or object-store prefix of DICOMs to a dataset (PNGs, ``train.csv``,
  ``preprocess.json``), incremental, in parallel, optionally one shard of several.
- ``bench``: files/s of the whole conversion against the raw decode alone.

Nothing here imports torch.
"""
