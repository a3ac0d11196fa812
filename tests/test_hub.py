"""R3: a config that needs the hub fails in seconds, naming the offline options, when the hub cannot be reached."""

import socket
import time

from helpers import cli
from pipelines.hub import unreachable


def test_a_silent_endpoint_is_given_up_after_the_timeout():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # accepts the connection, never answers
    try:
        start = time.time()
        why = unreachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=1.0)
        assert why and time.time() - start < 3
    finally:
        server.close()


def test_paper_scale_without_the_hub_fails_fast_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.time()
    proc = cli("run", "imdb-sentiment", "--scale", "paper", run_dir=tmp_path)
    assert proc.returncode == 2 and time.time() - start < 10
    line = proc.stderr.strip()
    assert "\n" not in line and "data.source = 'hf:stanfordnlp/imdb'" in line and "sft.model = 'gpt2-large'" in line
    assert "--scale tiny" in line and "HF_HUB_OFFLINE=1" in line
    assert not any(tmp_path.iterdir())  # nothing written
