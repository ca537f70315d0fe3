"""Tier 2: run directories and checkpoints on s3://, against a local S3 server (moto)."""

import json
import os
import socket
import time
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from coordinator import lease
from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from foundation.storage import Storage
from tests.support import ConfigFactory


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1"
    ).create_bucket(Bucket="wv-test")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_a_run_on_s3_checkpoints_and_resumes_exactly(
    make_config: ConfigFactory, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease, "SETTLE_S", 0.05)
    monkeypatch.setattr(lease, "STALE_AFTER_S", 1.0)
    storage = f"s3://wv-test/runs?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    sets = ["train.rounds=4", "train.checkpoint_every=2"]
    local = Coordinator(make_config(*sets, name="local"), LocalGroup)
    while not local.done:
        local.step()
    expected = local.finish()["center_sha256"]

    first = Coordinator(make_config(*sets, f"run.storage={storage}", name="remote"), LocalGroup)
    for _ in range(3):
        first.step()
    del first  # the driver dies after round 3; the checkpoint of round 2 is on S3
    # Its lease stays behind on S3 (no lock there), so a rerun at once is refused...
    with pytest.raises(lease.LeaseHeld, match=r"remote is being written by pid \d+"):
        Coordinator(make_config(*sets, f"run.storage={storage}", name="remote"), LocalGroup)
    time.sleep(1.2)  # ...until the lease is stale, then taken over
    again = Coordinator(make_config(*sets, f"run.storage={storage}", name="remote"), LocalGroup)
    assert again.resumed_from == 2
    while not again.done:
        again.step()
    assert again.finish()["center_sha256"] == expected

    run = Storage(storage).child("remote")
    for name in ("config.toml", "metrics.parquet", "events.jsonl", "summary.json",
                 "plots/training.png", "checkpoints/round-000004/manifest.json"):  # fmt: skip
        assert run.exists(name), name
    assert json.loads(run.read_bytes("summary.json"))["center_sha256"] == expected
    Storage(storage).check_writable()
