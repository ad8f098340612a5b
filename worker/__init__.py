"""The Celery side: app settings, thin tasks, per-process runtime, and the lstmq-worker launcher.
Nothing here imports TensorFlow at module level; only the pool process that runs tasks does."""
