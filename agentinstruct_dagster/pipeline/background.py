"""Coroutines run on an event loop in a background thread, their results handed back as each one finishes."""

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def as_completed_in_background(
    jobs: list[Callable[[], Awaitable[T]]],
) -> Iterator[tuple[int, T | BaseException]]:
    """Run every job side by side on one event loop in a background thread; yield `(index, result or exception)`
    in the order they finish, so the caller can handle one result while the others are still running. Closing
    the iterator early cancels the jobs still running and waits for them."""
    finished: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
    running: dict[str, Any] = {}
    started = threading.Event()

    async def job(index: int, make: Callable[[], Awaitable[T]]) -> None:
        try:
            finished.put((index, await make()))
        except Exception as error:
            finished.put((index, error))

    async def main() -> None:
        running.update(loop=asyncio.get_running_loop(), task=asyncio.current_task())
        started.set()
        await asyncio.gather(*(job(index, make) for index, make in enumerate(jobs)))

    def run() -> None:
        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # the loop itself failed: report it for every job still owed
            for index in range(len(jobs)):
                finished.put((index, error))
        finally:
            started.set()

    thread = threading.Thread(target=run, name="stage-wave", daemon=True)
    thread.start()
    delivered = 0
    try:
        while delivered < len(jobs):
            yield finished.get()
            delivered += 1
    finally:
        started.wait()
        if thread.is_alive() and running:
            running["loop"].call_soon_threadsafe(running["task"].cancel)
        thread.join()
