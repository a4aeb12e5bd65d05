"""An async workflow: `run` is a coroutine function, which warden runs to completion.

    target/release/warden exec examples/async_hello.py --params '{"name": "Ada"}'
"""

import asyncio


async def run(name="world", delay=0.01):
    await asyncio.sleep(delay)
    print(f"saying hello to {name}, asynchronously")
    return {"greeting": f"Hello, {name}!", "async": True}
