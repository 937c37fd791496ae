"""A ComfyUI server spoken to over HTTP (standard library only): upload, queue, wait, fetch.

Two kinds of failure are kept apart because the runner treats them differently:
``ServerDown`` (no answer: the server is dropped, its items go to other servers) and
``PromptFailed`` (the server answered that this prompt is invalid or failed: the item is
retried elsewhere a bounded number of times).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

REQUEST_TIMEOUT = 30.0
# /history is polled with a short first delay (small prompts finish in tens of ms) that grows.
_POLL_FIRST, _POLL_MAX = 0.005, 0.1
# Outputs of these kinds are files the prompt saved; "temp" ones are previews.
_FILE_OUTPUT_KEYS = ("images", "gifs", "video", "videos", "audio", "files")


class ServerDown(ConnectionError):
    """The server did not answer (refused, reset, timed out)."""


class PromptFailed(RuntimeError):
    """The server rejected the prompt (validation) or its execution raised."""


class ComfyClient:
    def __init__(self, url: str, timeout: float = REQUEST_TIMEOUT):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = f"catalog-{uuid.uuid4().hex[:12]}"

    # -- transport ------------------------------------------------------------------------
    def _open(self, request: urllib.request.Request | str) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            raise ServerDown(f"{self.url} did not answer: {error}") from error

    def get_json(self, path: str) -> Any:
        try:
            return json.loads(self._open(self.url + path))
        except urllib.error.HTTPError as error:
            raise ServerDown(f"GET {self.url}{path} -> HTTP {error.code}") from error

    # -- API ------------------------------------------------------------------------------
    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def frontend_version(self) -> str | None:
        return (self.get_json("/system_stats").get("system") or {}).get("required_frontend_version")

    def upload_image(self, name: str, data: bytes) -> str:
        """Upload into the server's input folder (overwriting a file of the same name); returns
        the value a LoadImage widget takes."""
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
            (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        request = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts), method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            answer = json.loads(self._open(request))
        except urllib.error.HTTPError as error:
            raise PromptFailed(f"upload of {name} refused: HTTP {error.code} {error.read()[:500]!r}") from error
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id, "extra_data": extra_data or {}}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            return json.loads(self._open(request))["prompt_id"]
        except urllib.error.HTTPError as error:
            raise PromptFailed(validation_message(error.read())) from error

    def wait(self, prompt_id: str, timeout: float) -> dict:
        """The /history entry of a finished prompt; PromptFailed if its execution failed."""
        deadline = time.monotonic() + timeout
        delay = _POLL_FIRST
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status") or {}
            if status.get("status_str") == "error":
                raise PromptFailed(execution_message(status))
            if status.get("completed"):
                return entry
            if time.monotonic() > deadline:
                raise PromptFailed(f"not finished within {timeout:.0f} s on {self.url}")
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    def download(self, file: dict) -> bytes:
        query = urllib.parse.urlencode({k: file.get(k, "") for k in ("filename", "subfolder", "type")})
        try:
            return self._open(f"{self.url}/view?{query}")
        except urllib.error.HTTPError as error:
            raise PromptFailed(f"output {file.get('filename')} could not be fetched: HTTP {error.code}") from error


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
