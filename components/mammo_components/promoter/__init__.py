"""Promoter: replaces models/<name>/production/ with the pipeline's best candidate when it beats
the current production model (see README.md)."""
