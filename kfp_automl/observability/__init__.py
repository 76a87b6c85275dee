"""Prometheus recording and alerting rules and the Grafana dashboard, generated from the runtime's series names."""
