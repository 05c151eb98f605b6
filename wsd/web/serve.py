"""`wsd serve DIR`: a local static web server for a web bundle.

Binds 127.0.0.1 by default: browsers offer WebGPU (and Cache Storage, and crypto.subtle)
only to secure contexts, which http://127.0.0.1 and http://localhost are; a LAN address
over plain http is not. Serves only files inside DIR: paths are resolved (symbolic links
too) and anything that lands outside DIR is a 404, as is anything hidden (a dot name).
"""

from __future__ import annotations

import functools
import http.server
import mimetypes
import os
import posixpath
import urllib.parse
from pathlib import Path
from typing import Callable

DEFAULT_PORT = 8888
TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".json": "application/json",
         ".bin": "application/octet-stream"}


class ServeError(RuntimeError):
    pass


def resolve_inside(root: Path, url_path: str) -> Path | None:
    """The file a URL path names inside root, or None when it is outside root (after
    resolving '..', encoded or not, and symbolic links) or has a hidden component."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path)
    parts = [p for p in posixpath.normpath("/" + path).split("/") if p]
    if any(p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        return None
    candidate = root.joinpath(*parts).resolve()
    if candidate != root and root not in candidate.parents:
        return None
    if candidate.is_dir():
        candidate = candidate / "index.html"
    return candidate if candidate.is_file() else None


class BundleHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, root: Path, on_request: Callable[[str, int], None] | None = None,
                 quiet: bool = False, **kwargs):
        self.root, self.on_request, self.quiet = root, on_request, quiet
        super().__init__(*args, directory=str(root), **kwargs)

    def send_head(self):
        path = resolve_inside(self.root, self.path)
        if path is None:
            self.send_error(404, "not found")
            return None
        try:
            file = open(path, "rb")
        except OSError:
            self.send_error(404, "not found")
            return None
        size = os.fstat(file.fileno()).st_size
        self.send_response(200)
        self.send_header("Content-Type", TYPES.get(path.suffix)
                         or mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(size))
        # The app checks and caches the weights itself; always revalidate the rest.
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        return file

    def log_request(self, code="-", size="-"):
        if self.on_request:
            self.on_request(self.path, int(code) if str(code).isdigit() else 0)
        if not self.quiet:
            super().log_request(code, size)


def make_server(directory, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                on_request=None, quiet: bool = False) -> http.server.ThreadingHTTPServer:
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ServeError(f"{directory} is not a directory (build one with "
                         f"`wsd build --target webgpu --out {directory}`)")
    if not (root / "wsd-config.json").is_file():
        raise ServeError(f"{directory} has no wsd-config.json: not a web bundle (build one "
                         f"with `wsd build --target webgpu --out {directory}`)")
    handler = functools.partial(BundleHandler, root=root, on_request=on_request, quiet=quiet)
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
