"""`make run`: start the model worker and the Streamlit app, print the URL, stop both on Ctrl-C.

The app starts at once (the persona-space pages read the space from disk); the worker loads the model in the
background and the chat pages say so until it is ready. Ports and paths come from the environment:
PERSONA_SPACE_MODEL, PERSONA_SPACE_SPACE, PERSONA_SPACE_WORKER_PORT (8765), PERSONA_SPACE_APP_PORT (8501),
PERSONA_SPACE_COMPILE (1: the worker compiles its decode step in the background; 0: it stays eager),
PERSONA_SPACE_PRECISION (default, or int8: int8 weights on a CPU; read by the worker itself).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    model = os.environ.get("PERSONA_SPACE_MODEL", "smollm2-135m")
    space = os.environ.get("PERSONA_SPACE_SPACE", str(ROOT / "cached_activations" / "smollm2-135m"))
    worker_port = int(os.environ.get("PERSONA_SPACE_WORKER_PORT", "8765"))
    app_port = int(os.environ.get("PERSONA_SPACE_APP_PORT", "8501"))
    env = dict(
        os.environ, PERSONA_SPACE_WORKER_URL=f"http://127.0.0.1:{worker_port}", PERSONA_SPACE_SPACE=space, PYTHONPATH=str(ROOT)
    )
    compile_flag = [] if os.environ.get("PERSONA_SPACE_COMPILE", "1") != "0" else ["--no-compile"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "backend", "serve", "--model", model, "--space", space, "--port", str(worker_port), *compile_flag],
        cwd=ROOT,
        env=env,
    )
    app = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.port", str(app_port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    children = [worker, app]

    def stop(*_: object) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()

    def terminated(*_: object) -> None:
        stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminated)
    print(
        f"Persona Space: open http://127.0.0.1:{app_port}  (worker http://127.0.0.1:{worker_port}; Ctrl-C stops both)", flush=True
    )
    announced = False
    try:
        while True:
            if worker.poll() is not None and not announced:
                print(f"the worker exited with code {worker.returncode}; the persona-space pages still work", flush=True)
                announced = True
            if app.poll() is not None:
                print(f"the app exited with code {app.returncode}", flush=True)
                return app.returncode or 1
            if not announced:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/health", timeout=2) as r:
                        if b'"ready":true' in r.read():
                            print("worker ready: the chat, transcripts and demo pages are live", flush=True)
                            announced = True
                except OSError:
                    pass
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
