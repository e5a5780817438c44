"""Seed scenario 13 with Celery on Levee: a web handler stores an upload and enqueues an encoding
job; encoders (Celery workers, acks_late, prefetch 1) process them one at a time.

Environment: LEVEE_AMQP_PORT, SCENARIO_DIR (uploads/, started/, done/ live there).
"""
import os
import time

from celery import Celery

PORT = os.environ["LEVEE_AMQP_PORT"]
DIR = os.environ["SCENARIO_DIR"]

app = Celery("encoder", broker=f"amqp://guest:guest@127.0.0.1:{PORT}//")
app.conf.update(
    task_acks_late=True,                 # ack after the job, so a crashed encoder's job returns
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,        # a busy encoder takes no new job
    task_ignore_result=True,
    worker_enable_remote_control=True,   # pidbox queues (`celery@host.celery.pidbox`), as default
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"confirm_publish": True},  # enqueue returns once stored
    worker_hijack_root_logger=False,
)


@app.task(name="encode")
def encode(job):
    marker = os.path.join(DIR, "started", job)
    first = not os.path.exists(marker)
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    if job.startswith("slow-") and first:
        # The first attempt of a slow job runs until its encoder is killed.
        time.sleep(60)
    with open(os.path.join(DIR, "uploads", job), "rb") as f:
        data = f.read()
    with open(os.path.join(DIR, "done", job), "w") as f:
        f.write(f"{os.getpid()} {len(data)}\n")


def handle_upload(job, body):
    """The web handler: store the upload, enqueue the job, answer at once."""
    with open(os.path.join(DIR, "uploads", job), "wb") as f:
        f.write(body)
    encode.delay(job)
    return 202


if __name__ == "__main__":
    import sys

    for job in sys.argv[1:]:
        assert handle_upload(job, os.urandom(1024)) == 202
    print("enqueued", len(sys.argv) - 1, flush=True)
