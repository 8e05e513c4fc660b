"""Helper scripts run by hand or by the Makefile, not imported by the pipeline."""
