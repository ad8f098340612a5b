"""shared.redact: no password of a broker URL reaches a message or a log line."""
from __future__ import annotations

import pytest

from lstmq.shared.redact import redact, redact_url, url_secrets


@pytest.mark.parametrize("url, expected", [
    ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://user:pw@h/0", "rediss://user:***@h/0"),
    ("redis://secret@h:6379/0", "redis://***@h:6379/0"),           # a bare user part may be a password
    ("redis://user:p%40ss%2Fw@h/0", "redis://user:***@h/0"),         # percent-encoded
    ("redis://:p@ss/w#rd@h:6379/0", "redis://:***@h:6379/0"),        # written as is: up to the last @
    ("redis://h:6379/0?password=secret&db=1", "redis://h:6379/0?password=***&db=1"),
    ("unix://:secret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ("REDISS://u:secret@h/0", "REDISS://u:***@h/0"),
])
def test_redact_url_masks_the_password(url, expected):
    assert redact_url(url) == expected
    assert "secret" not in redact_url(url) and "pw" not in redact_url(url).split("@")[0]


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://h/0", "redis://:@h/0", "redis://user:@h/0", ""])
def test_redact_url_leaves_urls_without_a_password(url):
    assert redact_url(url) == url


def test_redact_masks_urls_in_free_text_and_given_secrets():
    message = ("Error connecting to redis://:hunter2@10.0.0.5:6379/0 (see rediss://admin:letmein@broker:6380/1). "
               "auth with hunter2 failed; token abc123")
    text = redact(message, "abc123")
    assert "hunter2" not in text and "letmein" not in text and "abc123" not in text
    assert "redis://:***@10.0.0.5:6379/0" in text and "rediss://admin:***@broker:6380/1" in text
    assert "token ***" in text


def test_a_url_secret_stands_for_its_password_as_written_and_decoded():
    url = "redis://:p%40ss@h/0"
    assert url_secrets(url) == ["p%40ss", "p@ss"]
    assert redact("server said: bad password p@ss", url) == "server said: bad password ***"
    assert redact("nothing to hide", "redis://h/0", None, "") == "nothing to hide"


def test_redact_accepts_exceptions():
    assert redact(ConnectionError("cannot reach redis://:s3cret@h/0")) == "cannot reach redis://:***@h/0"


def test_urls_in_quotes_and_brackets():
    text = redact("url='redis://:s3cret@h/0' <rediss://u:s3cret@h/0> (redis://:s3cret@h/0)")
    assert "s3cret" not in text and text.count("***") == 3
