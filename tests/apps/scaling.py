import os
import time

import runner

app = runner.App("tests-scaling")


@app.function(min_containers=2, scaledown_window=1)
def warm(x: int) -> int:
    return os.getpid()


@app.function(max_containers=3, scaledown_window=1)
def sleepy(x: float) -> int:
    time.sleep(x)
    return os.getpid()


@app.function(max_containers=4, buffer_containers=2, scaledown_window=60)
def buffered(x: float) -> int:
    time.sleep(x)
    return os.getpid()
