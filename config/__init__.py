"""Package holding lstmq's default settings file, default.yaml (read by shared.config)."""
