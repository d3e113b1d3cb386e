"""gunicorn settings for `/metrics` with several workers (`gunicorn -c config/gunicorn_conf.py ...`).

prometheus_client's multiprocess mode: every worker writes its counters to files in
`PROMETHEUS_MULTIPROC_DIR`, emptied when the server starts; a worker that exits is marked dead so
its live gauges are dropped (its counters still add up). Celery workers may share the directory.
"""

import os
import shutil
import tempfile

_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), "billing-prometheus")
)
shutil.rmtree(_metrics_dir, ignore_errors=True)
os.makedirs(_metrics_dir, exist_ok=True)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
