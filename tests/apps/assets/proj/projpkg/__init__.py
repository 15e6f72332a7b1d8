"""The test project's own package: shipped into project images, not installed."""

VALUE = "from projpkg"


def greet(name: str) -> str:
    return f"hello {name}"
