"""Scorer component: scores a dataset of studies (no labels needed) with the production model."""
