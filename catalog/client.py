"""A ComfyUI server spoken to over HTTP (standard library only): upload, queue, wait, fetch.

Two kinds of failure are kept apart because the runner treats them differently:
``ServerDown`` (no usable answer: the server is dropped, its items go to other servers) and
``PromptFailed`` (the server answered that this prompt is invalid or failed: the item is
retried elsewhere a bounded number of times). Whatever goes wrong on the way — refused,
reset, timed out, an answer cut off midway, a gateway error, bad JSON, an HTML page with
status 200, a file that is not the image it names — is ``ServerDown``: nothing of it says
the item is at fault.
"""
from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import PurePosixPath
from typing import Any

REQUEST_TIMEOUT = 30.0
# /history is polled with a short first delay (small prompts finish in tens of ms) that grows.
_POLL_FIRST, _POLL_MAX = 0.005, 0.1
# Outputs of these kinds are files the prompt saved; "temp" ones are previews.
_FILE_OUTPUT_KEYS = ("images", "gifs", "video", "videos", "audio", "files")
# A proxy's answers when the ComfyUI behind it is gone.
_GATEWAY_ERRORS = frozenset({502, 503, 504})
# How a whole file of these kinds starts and ends: a body without both is an error page or cut off.
_FILE_MARKS = {
    ".png": (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),
    ".jpg": (b"\xff\xd8\xff", b"\xff\xd9"),
    ".jpeg": (b"\xff\xd8\xff", b"\xff\xd9"),
    ".gif": (b"GIF8", b";"),
    ".webp": (b"RIFF", b""),
}
# Upload names the runner makes; anything else could carry multipart header syntax or a path.
_SAFE_UPLOAD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ServerDown(ConnectionError):
    """The server gave no usable answer (refused, reset, timed out, cut off, not ComfyUI's)."""


class PromptFailed(RuntimeError):
    """The server rejected the prompt (validation) or its execution raised."""


class ComfyClient:
    def __init__(self, url: str, timeout: float = REQUEST_TIMEOUT):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = f"catalog-{uuid.uuid4().hex[:12]}"

    # -- transport ------------------------------------------------------------------------
    def _request(self, path: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes, str]:
        """(HTTP status, whole body, content type) of a GET, or a POST when there is a body."""
        headers = {"Content-Type": content_type} if content_type else {}
        request = urllib.request.Request(self.url + path, data=body, headers=headers,
                                         method="GET" if body is None else "POST")
        try:
            try:
                response = urllib.request.urlopen(request, timeout=self.timeout)
            except urllib.error.HTTPError as error:  # an answer too: its status and body are read below
                response = error
            with response:
                status, answer = response.getcode(), response.read()
                kind = response.headers.get_content_type()
        except (http.client.HTTPException, OSError) as error:  # IncompleteRead, reset, refused, timeout, ...
            raise ServerDown(f"{self.url}{path}: {type(error).__name__}: {error}") from error
        if status in _GATEWAY_ERRORS:
            raise ServerDown(f"{self.url}{path} -> HTTP {status} (a proxy whose server is gone)")
        return status, answer, kind

    def _json(self, path: str, status: int, answer: bytes) -> dict:
        """The JSON object a ComfyUI route answers with; anything else means the server is not usable."""
        try:
            value = json.loads(answer)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ServerDown(f"{self.url}{path} -> HTTP {status} answered no JSON object: {answer[:200]!r}")
        return value

    def get_json(self, path: str) -> dict:
        status, answer, _ = self._request(path)
        if status != 200:
            raise ServerDown(f"GET {self.url}{path} -> HTTP {status}")
        return self._json(path, status, answer)

    # -- API ------------------------------------------------------------------------------
    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def frontend_version(self) -> str | None:
        return (self.get_json("/system_stats").get("system") or {}).get("required_frontend_version")

    def upload_image(self, name: str, data: bytes) -> str:
        """Upload into the server's input folder; returns the value a LoadImage widget takes.
        ``name`` must be a plain file name (letters, digits, ``_.-``). Without ``overwrite`` ComfyUI
        never replaces a different file: it keeps an identical one, or picks ``name (1).ext``."""
        if not _SAFE_UPLOAD_NAME.fullmatch(name):
            raise ValueError(f"upload name {name!r} is not a plain file name (letters, digits, _ . -)")
        boundary = uuid.uuid4().hex
        body = b"".join([
            (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ])
        status, answer, _ = self._request("/upload/image", body, f"multipart/form-data; boundary={boundary}")
        if status != 200:
            raise PromptFailed(f"upload of {name} refused: HTTP {status} {answer[:500]!r}")
        stored = self._json("/upload/image", status, answer)
        if not isinstance(stored.get("name"), str):
            raise ServerDown(f"{self.url}/upload/image answered no file name: {answer[:200]!r}")
        return f"{stored['subfolder']}/{stored['name']}" if stored.get("subfolder") else stored["name"]

    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id, "extra_data": extra_data or {}}).encode()
        status, answer, _ = self._request("/prompt", body, "application/json")
        if status != 200:
            raise PromptFailed(validation_message(answer))
        prompt_id = self._json("/prompt", status, answer).get("prompt_id")
        if not isinstance(prompt_id, str):
            raise ServerDown(f"{self.url}/prompt answered no prompt id: {answer[:200]!r}")
        return prompt_id

    def wait(self, prompt_id: str, timeout: float) -> dict:
        """The /history entry of a finished prompt; PromptFailed if its execution failed."""
        deadline = time.monotonic() + timeout
        delay = _POLL_FIRST
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id) or {}
            status = (entry.get("status") or {}) if isinstance(entry, dict) else None
            if not isinstance(status, dict):
                raise ServerDown(f"{self.url}/history/{prompt_id} answered a malformed entry: {entry!r:.200}")
            if status.get("status_str") == "error":
                raise PromptFailed(execution_message(status))
            if status.get("completed"):
                return entry
            if time.monotonic() > deadline:
                raise PromptFailed(f"not finished within {timeout:.0f} s on {self.url}")
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    def download(self, file: dict) -> bytes:
        """A saved file's bytes; ServerDown when what came back is not that whole file (an HTML
        page, a body cut off), which says nothing about the item."""
        name = str(file.get("filename"))
        query = urllib.parse.urlencode({k: file.get(k, "") for k in ("filename", "subfolder", "type")})
        status, answer, kind = self._request(f"/view?{query}")
        if status != 200:
            raise PromptFailed(f"output {name} could not be fetched: HTTP {status}")
        start, end = _FILE_MARKS.get(PurePosixPath(name).suffix.lower(), (b"", b""))
        if kind == "text/html" or not (answer.startswith(start) and answer.endswith(end)):
            raise ServerDown(f"{self.url}/view of {name} answered something else ({kind}, {len(answer)} bytes: "
                             f"{answer[:80]!r})")
        return answer


def saved_files(history_entry: dict) -> list[dict]:
    """The files the prompt saved (type "output"), in node id order then output order."""
    outputs = history_entry.get("outputs") or {}
    files = []
    for node_id in sorted(outputs, key=lambda n: (len(n), n)):
        for key in _FILE_OUTPUT_KEYS:
            files += [f for f in outputs[node_id].get(key) or [] if isinstance(f, dict) and f.get("type") == "output"]
    return files


def execution_seconds(history_entry: dict) -> float | None:
    """How long the server executed the prompt (its own start/end timestamps), if it says."""
    stamps = {event: data.get("timestamp") for event, data in (history_entry.get("status") or {}).get("messages") or []
              if isinstance(data, dict)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return (end - start) / 1000.0 if start is not None and end is not None else None


def validation_message(body: bytes) -> str:
    """ComfyUI's 400 answer to POST /prompt in one readable line per problem."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return body.decode(errors="replace")[:1000]
    error = answer.get("error") or {}
    lines = [f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": ")]
    for node_id, node in sorted((answer.get("node_errors") or {}).items()):
        for item in node.get("errors") or []:
            lines.append(f"node {node_id} ({node.get('class_type')}): {item.get('message')}: {item.get('details')}")
    return "; ".join(lines)


def execution_message(status: dict) -> str:
    for event, data in status.get("messages") or []:
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                    f"{data.get('exception_type')}: {data.get('exception_message')}").strip()
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "execution failed (no error message in /history)"
