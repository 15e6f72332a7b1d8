"""A function whose image goes through an image registry (tests/test_registry.py)."""

import runner

MARKER = "pushed-through-a-registry-7f3c"
image = runner.Image.debian_slim().env({"REGISTRY_TEST": "1"}).run_commands(f"echo {MARKER} > /marker")
app = runner.App("tests-registry", image=image)


@app.function()
def read_marker() -> str:
    return open("/marker").read().strip()
