"""Functions for the docker provider tests (imported by module name inside containers)."""

import os
import socket

import runner

image = runner.Image.debian_slim().env({"STEP_ENV": "from-image"}).run_commands("echo layered > /layered.txt")
app = runner.App("tests-docker", image=image)


@app.function()
def inspect_container() -> dict:
    return {
        "hostname": socket.gethostname(),
        "env": os.environ.get("STEP_ENV"),
        "layered": open("/layered.txt").read().strip(),
        "cwd": os.getcwd(),
    }


@app.function(cpu=(0.5, 1.0), memory=(64, 128))
def limited() -> str:
    return socket.gethostname()


@app.function(memory=(32, 64), retries=0)
def hog(mib: int) -> int:
    blocks = [bytearray(1024 * 1024) for _ in range(mib)]
    return len(blocks)


@app.function()
def shout(text: str) -> str:
    print(f"stdout-from-container {text}")
    return text.upper()


packaged = runner.Image.debian_slim().apt_install("jq").pip_install("six==1.16.0")
packaged_app = runner.App("tests-docker-packages", image=packaged)


@packaged_app.function()
def tools() -> dict:
    import subprocess

    import six

    jq = subprocess.run(["jq", "-n", "1+2"], capture_output=True, text=True).stdout.strip()
    return {"six": six.__version__, "jq": jq}
