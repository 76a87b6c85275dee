"""What a fitted model and a Bento need, shipped inside every Bento.

The fitted transformers, the model file and its digest, record coercion, the serving fast
path, drift bins, metrics and the names of the exported series. It imports only numpy,
pandas, scikit-learn, joblib (and the model libraries when a model is unpickled), and of
this project only `kfp_automl.errors`, `kfp_automl.files` and `kfp_automl.contracts`.
"""
