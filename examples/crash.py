"""Kills its own process with SIGKILL, so no result is ever sent: the execution ends
`crashed` (with the signal), and the worker template survives.

    target/release/warden exec examples/crash.py
"""

import os
import signal


def run():
    print("about to SIGKILL myself")
    os.kill(os.getpid(), signal.SIGKILL)
