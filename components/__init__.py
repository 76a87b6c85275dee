"""kfp-automl components: data prep, Ray Tune search, evaluation and BentoML packaging."""

__version__ = "0.1.0"
