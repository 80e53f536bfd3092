"""Unfreeze trainer component: gradual unfreezing from a baseline checkpoint URI."""
