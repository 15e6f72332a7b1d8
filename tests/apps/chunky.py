import os
import time

import runner

app = runner.App("tests-chunks")


@app.function(timeout=2, max_containers=1)
def work(x: int) -> int:
    if x == -1:
        raise ValueError("minus one is not allowed")
    if x == -2:
        time.sleep(30)
    if x == -3:
        os._exit(9)
    return x * 10


@app.function(max_containers=1)
def whoami(x: int) -> str:
    return runner.current_input_id()
