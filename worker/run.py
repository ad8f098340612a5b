"""One Celery worker (python -m lstmq.worker.run): started by lstmq-worker, once per device, with
CUDA_VISIBLE_DEVICES already set. This process is the prefork parent and never imports
TensorFlow; its single pool process does (lstmq.worker.tasks -> runtime.init_process)."""
from __future__ import annotations

import argparse
import os
import sys

from lstmq.shared.config import load_settings
from lstmq.shared.errors import ConfigError
from lstmq.shared.messages import QUEUES
from lstmq.worker import runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lstmq.worker.run", description=__doc__)
    parser.add_argument("--name", default="lstmq-cpu@%h", help="Celery node name")
    parser.add_argument("--device", default=os.environ.get("LSTMQ_DEVICE", "cpu"), help="device label for logs")
    parser.add_argument("--queues", default=",".join(QUEUES))
    parser.add_argument("--broker")
    parser.add_argument("--config")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, {"broker_url": args.broker})
    except ConfigError as error:
        print(f"lstmq-worker: {error}", file=sys.stderr)
        return 2
    name = args.name.replace("%h", os.uname().nodename)
    runtime.configure(settings, name, args.device)   # before anything reads the app's settings
    from lstmq.worker import tasks   # registers the tasks on the app
    tasks.app.worker_main(["worker", "--queues", args.queues, "--concurrency", "1", "--pool", "prefork",
                     "--hostname", args.name, "--loglevel", args.loglevel, "--without-mingle", "--without-gossip"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
