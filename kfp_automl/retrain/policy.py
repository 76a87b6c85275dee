"""What an alert may ask of the retrain trigger: which models, which data, and whether a run deploys.

An alert is only as trustworthy as whoever could send it, and the trigger cannot tell a
forged alert with the right token from a real one. So the alert chooses nothing the
trigger's settings did not allow:

- its `model` label must be one of `--allow-model` (an alert for any other model, or
  without one, is refused and counted);
- its `data_url` annotation is used only when `--allow-data-prefix` names prefixes and the
  URL lies under one of them (at a path boundary, without `..` or encoded separators);
  without prefixes the annotation is ignored and the run trains on `--data`;
- a run that would deploy (`deploy_namespace` set) keeps it only when the registry holds a
  champion of the run's model, so the gate compares the new model with one that was served;
  a model without a champion is trained and registered, never deployed by a triggered run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kfp_automl.errors import UserError

MODEL_LABEL = "model"
DATA_ANNOTATION = "data_url"
# `..` as a path segment, a backslash, or a percent-encoded dot, slash or backslash
_TRAVERSAL = re.compile(r"(^|/)\.\.(/|$)|\\|%2e|%2f|%5c", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class Refusal:
    """Why an alert starts nothing: a metric label and a sentence for the log and the answer."""

    reason: str  # "model_not_allowed" or "data_url_not_allowed"
    message: str


def split_values(values: tuple[str, ...] | list[str]) -> list[str]:
    """Repeated and comma-separated option values, stripped, empty ones dropped."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def check_prefix(prefix: str) -> str:
    """A data URL prefix as given to --allow-data-prefix, or a UserError saying what is wrong."""
    if _CONTROL.search(prefix) or _TRAVERSAL.search(prefix):
        raise UserError(f"--allow-data-prefix {prefix!r}: no spaces, control characters or '..'")
    scheme, sep, rest = prefix.partition("://")
    if sep and (not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) or not rest.split("/", 1)[0]):
        raise UserError(f"--allow-data-prefix {prefix!r}: give SCHEME://BUCKET/PATH/")
    if not sep and not prefix.startswith("/"):
        raise UserError(
            f"--allow-data-prefix {prefix!r}: give a URL (s3://bucket/path/) or an absolute path"
        )
    return prefix


def data_url_allowed(url: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `url` lies under one of `prefixes` (at a path boundary), and is a plain one."""
    if _CONTROL.search(url) or _TRAVERSAL.search(url):
        return False
    for prefix in prefixes:
        base = prefix if prefix.endswith("/") else prefix + "/"
        if url == prefix or url.startswith(base):
            return True
    return False


def refusal(
    labels: dict[str, str],
    annotations: dict[str, str],
    allowed_models: frozenset[str],
    data_prefixes: tuple[str, ...],
) -> Refusal | None:
    """Why a firing retrain alert must start nothing, or None when it may."""
    model = labels.get(MODEL_LABEL, "")
    if not model:
        return Refusal("model_not_allowed", "the alert has no model label")
    if model not in allowed_models:
        return Refusal("model_not_allowed", f"model {model[:100]!r} is not one of --allow-model")
    url = annotations.get(DATA_ANNOTATION, "")
    if url and data_prefixes and not data_url_allowed(url, data_prefixes):
        return Refusal(
            "data_url_not_allowed",
            f"data_url {url[:200]!r} is not under an --allow-data-prefix",
        )
    return None


def has_champion(registry: Any, model_name: str) -> bool:
    """Whether `registry` (a kfp_automl.registry Registry) holds a champion of `model_name`;
    a UserError when the registry cannot be read."""
    return registry.champion(model_name) is not None
