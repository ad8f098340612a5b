"""The demo's corpus download, against a local HTTP server (the network here is loopback only)."""
import functools
import hashlib
import http.server
import threading

import pytest

from examples.demo import CORPUS_SHA256, fetch_corpus


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_checks_the_pinned_sha256(http_root, tmp_path, corpus_text):
    root, url = http_root
    (root / "advs.txt").write_text(corpus_text, encoding="utf-8", newline="")
    assert hashlib.sha256((root / "advs.txt").read_bytes()).hexdigest() == CORPUS_SHA256
    path = fetch_corpus(f"{url}/advs.txt", CORPUS_SHA256, cache_dir=str(tmp_path / "cache"))
    assert path.is_relative_to(tmp_path / "cache")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CORPUS_SHA256
    (root / "other.txt").write_text("not the corpus\n")
    with pytest.raises(ValueError, match="(?i)hash"):
        fetch_corpus(f"{url}/other.txt", CORPUS_SHA256, cache_dir=str(tmp_path / "cache2"))
