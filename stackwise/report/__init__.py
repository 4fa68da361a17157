"""Reporting: papermill experiments and the site."""
