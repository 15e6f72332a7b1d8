VALUE = "from mypkg"
