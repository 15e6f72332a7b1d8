import runner

app = runner.App("tests-window")


@app.function()
def ident(x: int) -> int:
    return x
