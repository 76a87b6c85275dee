"""The pipeline's steps (installed as `kfp_automl.components`).

One sub-package per KFP step: `component.py` is the thin `@dsl.component` adapter, the
other modules are plain Python that knows nothing of KFP.
"""
