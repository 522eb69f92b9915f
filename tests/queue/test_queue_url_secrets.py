"""Queue URLs: one ``redact_url`` hides every secret wherever a URL is shown, and the URL (with its
password) can come from the environment or a file instead of the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.queue import QueueError, open_queue, redact_url
from tests.conftest import REPO


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("redis://user:s3cret@h:6379/0?stream=x", "redis://user:***@h:6379/0?stream=x"),
        ("rediss://s3cret@h:6380/1", "rediss://***@h:6380/1"),
        ("redis://h:6379/0?password=s3cret&stream=x", "redis://h:6379/0?password=***&stream=x"),
        ("sqlite:///data/q.db?stream=x", "sqlite:///data/q.db?stream=x"),
    ],
)
def test_redact_url_hides_userinfo_and_password_parameters(url, shown):
    assert redact_url(url) == shown


def test_queue_url_from_environment_or_file(tmp_path, monkeypatch):
    db = tmp_path / "q.db"
    monkeypatch.delenv("CAI_QUEUE_URL", raising=False)
    secret = tmp_path / "queue-url"
    secret.write_text(f"\nsqlite:///{db}?stream=helper12_env\n")
    monkeypatch.setenv("CAI_QUEUE_URL_FILE", str(secret))
    q = open_queue("")
    assert q.stream == "helper12_env"
    q.close()
    monkeypatch.setenv("CAI_QUEUE_URL", f"sqlite:///{db}?stream=helper12_env2")
    q = open_queue("")
    assert q.stream == "helper12_env2"
    q.close()
    monkeypatch.delenv("CAI_QUEUE_URL")
    monkeypatch.setenv("CAI_QUEUE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(QueueError, match="queue URL file .*missing: cannot read"):
        open_queue("")


def test_bad_queue_url_error_never_shows_the_password():
    with pytest.raises(QueueError) as err:
        open_queue("redis://:s3cret@127.0.0.1:1/zero?password=s3cret")
    assert "s3cret" not in str(err.value)


def test_cli_takes_the_queue_url_from_a_file_and_names_a_missing_one(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "p1", "messages": 7}\n')
    secret = tmp_path / "queue-url"
    secret.write_text(f"sqlite:///{tmp_path}/q.db?stream=helper12_cli\n")
    base = [sys.executable, "-m", "services.cli", "label", "--prompts", str(bad), "--helpfulness-pairs", ""]
    # the URL from the file passes config validation: the next problem reported is the prompts file
    ok = subprocess.run([*base, "--queue-file", str(secret)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 2 and f"{bad}:1" in ok.stderr, ok.stderr[-2000:]
    missing = subprocess.run(
        [*base, "--queue-file", str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2 and "nope: cannot read" in missing.stderr and "Traceback" not in missing.stderr
