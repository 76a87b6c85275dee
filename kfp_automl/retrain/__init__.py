"""The retrain trigger: an Alertmanager webhook that starts a training run on a drift or quality alert."""
