"""Logs something, then raises: the execution ends `failed` with the error's type, message
and traceback.

    target/release/warden exec examples/fails.py --params '{"order_id": 7}'
"""

import logging

log = logging.getLogger("orders")


def run(order_id=42):
    print(f"checking order {order_id}")
    log.warning("order %s has no line items", order_id)
    raise ValueError(f"order {order_id} has no line items")
