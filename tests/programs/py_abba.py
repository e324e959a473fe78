"""Two threads take two threading.Lock objects in opposite orders: CPython's
locks (3.11, 3.12) are semaphores, and no pthread lock is involved.
    py_abba.py           one after the other (an Event keeps them apart): a
                         lock-order inversion
    py_abba.py deadlock  at once (a Barrier between their first and second
                         lock): they deadlock for good
Prints "thread ab TID" and "thread ba TID"."""

import sys
import threading

lock_a = threading.Lock()
lock_b = threading.Lock()
deadlock = sys.argv[1:] == ["deadlock"]
first_done = threading.Event()
both_hold_one = threading.Barrier(2)


def say(line):
    """One write per line: two threads' lines never mix (print writes the end apart)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def lock_a_then_b():
    say(f"thread ab {threading.get_native_id()}")
    with lock_a:
        if deadlock:
            both_hold_one.wait()
        with lock_b:
            pass
    first_done.set()


def lock_b_then_a():
    if not deadlock:
        first_done.wait()
    say(f"thread ba {threading.get_native_id()}")
    with lock_b:
        if deadlock:
            both_hold_one.wait()
        with lock_a:
            pass


threads = [threading.Thread(target=lock_a_then_b), threading.Thread(target=lock_b_then_a)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
