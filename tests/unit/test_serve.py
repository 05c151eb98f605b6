"""`wsd serve`: serves a bundle's files, and nothing outside it."""

from __future__ import annotations

import http.client
import threading

import pytest

from wsd.cli import main
from wsd.web.serve import ServeError, make_server, resolve_inside


@pytest.fixture
def bundle(tmp_path):
    root = tmp_path / "dist"
    (root / "params").mkdir(parents=True)
    (root / "wsd-config.json").write_text("{}")
    (root / "index.html").write_text("<!doctype html><p>page</p>")
    (root / "model.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / "params" / "params_shard_0.bin").write_bytes(bytes(range(256)) * 4)
    (root / ".hidden").write_text("no")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
def server(bundle):
    log = []
    srv = make_server(bundle, port=0, quiet=True, on_request=lambda p, c: log.append((p, c)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address, log
    srv.shutdown()
    srv.server_close()


def get(address, path):
    conn = http.client.HTTPConnection(*address, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.getheader("Content-Type"), resp.read()


def test_serves_bundle_files(server, bundle):
    address, log = server
    assert get(address, "/")[:2] == (200, "text/html")
    status, ctype, body = get(address, "/model.wasm")
    assert (status, ctype, body) == (200, "application/wasm", b"\0asm\1\0\0\0")
    status, _, body = get(address, "/params/params_shard_0.bin")
    assert status == 200 and body == (bundle / "params" / "params_shard_0.bin").read_bytes()
    assert get(address, "/wsd-config.json")[:2] == (200, "application/json")
    assert ("/model.wasm", 200) in log


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/params/../../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt",
    "/link", "/.hidden", "/params/.%2e/.%2e/secret.txt", "/nothing-here", "/params/missing.bin",
])
def test_nothing_outside_the_bundle(server, path):
    status, _, body = get(server[0], path)
    assert status == 404 and b"outside" not in body


def test_resolve_inside(bundle):
    root = bundle.resolve()
    assert resolve_inside(root, "/params/params_shard_0.bin?x=1") == \
        root / "params" / "params_shard_0.bin"
    assert resolve_inside(root, "/") == root / "index.html"
    assert resolve_inside(root, "/link") is None


def test_binds_loopback_by_default(bundle):
    srv = make_server(bundle, port=0)
    try:
        assert srv.server_address[0] == "127.0.0.1"
    finally:
        srv.server_close()


def test_bad_directories(tmp_path, capsys):
    with pytest.raises(ServeError, match="is not a directory"):
        make_server(tmp_path / "missing", port=0)
    with pytest.raises(ServeError, match="not a web bundle"):
        make_server(tmp_path, port=0)
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_port_in_use(bundle):
    first = make_server(bundle, port=0)
    try:
        with pytest.raises(ServeError, match="cannot listen on 127.0.0.1"):
            make_server(bundle, port=first.server_address[1])
    finally:
        first.server_close()
