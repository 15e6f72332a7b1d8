"""Hello, world: the first program to run with runner.

    runner run examples/hello_world.py

It runs unchanged on Modal: runner answers `import modal` under `runner run`.
"""

import sys

import modal

app = modal.App("example-hello-world")


@app.function()
def f(i: int) -> int:
    if i % 2 == 0:
        print("hello", i)
    else:
        print("world", i, file=sys.stderr)
    return i * i


@app.local_entrypoint()
def main():
    # Run the function here, in this process.
    print("local:", f.local(1000))
    # Run it in a container.
    print("remote:", f.remote(1000))
    # Run it over many inputs, in parallel, in warm containers.
    total = 0
    for square in f.map(range(200)):
        total += square
    print("sum of squares:", total)
