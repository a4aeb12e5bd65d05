"""The smallest workflow: greets someone.

    target/release/warden exec examples/hello.py --params '{"name": "Ada"}'
"""


def run(name="world"):
    print(f"saying hello to {name}")
    return {"greeting": f"Hello, {name}!"}
