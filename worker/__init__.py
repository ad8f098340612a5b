"""The worker side: the Celery plumbing (app, tasks, runtime, launcher, transport, metrics), what
a worker does with a job (jobs/), and the LSTM engine (engine/). Nothing here imports TensorFlow
at module level; only the pool process that runs tasks does."""
