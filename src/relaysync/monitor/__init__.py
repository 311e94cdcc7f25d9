"""Server monitoring: collectors, probes, thresholds, alerts and Prometheus exposition."""
