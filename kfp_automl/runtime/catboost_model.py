"""CatBoost's classifier with scikit-learn's `predict`: the most probable class, one per row.

CatBoost's own `predict` answers a multiclass model with an (n, 1) column of labels, not
scikit-learn's (n,) vector, and every caller here (serving, batch scoring, the evaluation)
takes a classifier's answer as its most probable class anyway. Only this module imports
catboost, so a model of any other family never loads it.
"""

from __future__ import annotations

import numpy as np
from catboost import CatBoostClassifier as _CatBoostClassifier


class CatBoostClassifier(_CatBoostClassifier):
    def predict(self, X, *args, **kwargs):
        if args or kwargs:  # another prediction_type: CatBoost's own answer
            return super().predict(X, *args, **kwargs)
        proba = np.asarray(self.predict_proba(X))
        return np.asarray(self.classes_)[np.argmax(proba, axis=1)]
