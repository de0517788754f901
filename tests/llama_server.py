"""A real OpenAI-compatible server for the HTTP generation backend's tests.

llama-cpp-python's server (``python -m llama_cpp.server``) serves the same SmolLM2 GGUF the
offline profile uses, on 127.0.0.1 and a free port, started as a subprocess and stopped by
the fixture. Tests that need it skip only when llama-cpp-python is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from core.generation.local.profiles import SMOLLM2_GGUF, smollm2_package_dir
from core.generation.remote.chat_token_counter import ChatTokenCounter, load_token_counter
from core.settings import Settings

MODEL_ALIAS = "smollm2-135m"
CONTEXT = 2048
STARTUP_SECONDS = 120.0


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LlamaServer:
    """One running llama-cpp-python server process."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str | None = None
    stopped: bool = field(default=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on SIGINT
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.log_path.unlink(missing_ok=True)


def start_llama_server(port: int | None = None, *, api_key: str | None = None) -> LlamaServer:
    """Start the server and return once it answers ``/v1/models``; fail with its log if not."""
    port = port or free_port()
    gguf = smollm2_package_dir() / SMOLLM2_GGUF
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open by the process)
        prefix="llama-server-", suffix=".log", delete=False
    )
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(CONTEXT),
        # One thread: with two, llama.cpp's OpenMP workers spin-wait for each other, and on
        # a CPU shared with other work (CI, parallel test runs) a reply took ten times longer.
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
        "--verbose",
        "false",
    ]
    if api_key:
        command += ["--api_key", api_key]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    log_file.close()
    server = LlamaServer(port, process, Path(log_file.name), api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stopped = True  # keep its log: the error below quotes it
            raise RuntimeError(
                f"llama-cpp-python's server exited with {process.returncode}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.base_url}/models", headers=headers, timeout=2).is_success:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    tail = server.log_tail()
    server.stop()
    raise RuntimeError(f"llama-cpp-python's server did not start:\n{tail}")


def require_llama_cpp() -> None:
    if not llama_cpp_installed():
        pytest.skip(
            "llama-cpp-python is not installed, so there is no OpenAI-compatible server to "
            "test against: run scripts/setup (it installs llama-cpp-python[server])."
        )


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """One server for the whole session (loading the 135M model takes about a second)."""
    require_llama_cpp()
    server = start_llama_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openai_counter(model_cache_dir: Path) -> ChatTokenCounter:
    """SmolLM2's tokenizer, loaded once: the HTTP backend counts prompt tokens locally."""
    settings = Settings(
        data_dir=model_cache_dir / "unused",
        cache_dir=model_cache_dir,
        model_profile="smollm2-135m",
        device="cpu",
    )
    return load_token_counter(settings)
