"""Never returns: the execution is killed at its deadline and ends `timeout`.

    target/release/warden exec examples/slow.py --timeout 1
"""


def run():
    print("spinning until the deadline")
    while True:
        pass
