"""Takes a required parameter and returns a computed value.

    target/release/warden exec examples/double.py --params '{"x": 21}' --json
"""


def run(x):
    return {"y": x * 2}
