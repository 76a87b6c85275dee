"""The export-feedback step: labelled production predictions as a training table."""
