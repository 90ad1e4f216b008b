"""``detkit benchmark``'s measurements: round-robin latency of every inference path against OpenCV
DNN, end-to-end runs of the detect pipeline against a plain OpenCV loop, accuracy of every path,
and the machine's compute floor.

May import everything below the CLI (infer, evaluate, darknet, data, metrics); nothing imports it
but the CLI.
"""
