"""Baseline trainer component: warm-up, full data, early stopping; resumable from storage."""
