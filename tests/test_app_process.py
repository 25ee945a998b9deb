"""`vtanalysis app` stopped by its process id stops the Streamlit server it started (issue 43: the
child kept serving on the port after its parent was killed)."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc for the child process")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_app_command_stops_its_server(how):
    pytest.importorskip("streamlit")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parent = subprocess.Popen([sys.executable, "-m", "vtanalysis", "app", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = []
    try:
        url = f"http://127.0.0.1:{port}/_stcore/health"
        for _ in range(240):
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the app's server did not come up")
        servers = children(parent.pid)
        assert servers, "vtanalysis app started no child process"
        parent.send_signal(how)
        parent.wait(timeout=60)
        deadline = time.time() + 30
        while any(alive(p) for p in servers) and time.time() < deadline:
            time.sleep(0.5)
        assert not any(alive(p) for p in servers), "the Streamlit server outlived `vtanalysis app`"
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2)
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in servers:  # never leave a server behind, even on failure
            if alive(p):
                os.kill(p, signal.SIGKILL)
