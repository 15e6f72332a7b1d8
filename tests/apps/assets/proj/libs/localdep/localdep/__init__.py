"""A dependency from a local path: its code is shipped, it is not installed from the lock."""

VALUE = "from localdep"
