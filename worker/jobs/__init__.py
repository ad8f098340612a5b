"""What a worker does with a job, behind the thin Celery tasks (worker.tasks), by concern:

- leases.py    leases on work in progress, retries of transient Redis errors, error descriptions
- training.py  the training job: slices, checkpoints, registration and the promotion policy
- chunks.py    the chunk pipeline of a generate job: read, check, decode, write once

The engine (worker.engine) is imported only when a job runs."""
