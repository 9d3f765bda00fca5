"""Lockstep: training runs on one GPU that take turns, one optimizer step each.

Run back to back, two runs of the same code on an H200 can differ by 10-40% in step time (clocks,
a neighbour's load), which drowns a 2% difference between dropsweep and the bare script. In
lockstep both run at once on the same GPU and a referee hands the turn round: a run holds the GPU
from one on_step_begin to the next (its step, the logging and callbacks after it, the next batch),
synchronizes, and passes the turn on. Each of its steps is then timed alone on the GPU, and the two
sides' steps alternate within the same seconds, so slow spells fall on both.

    python -m benchmarks.lockstep -m src.run quant=nf4 ...             # a module, as with python -m
    python -m benchmarks.lockstep benchmarks/bare_trainer.py --quant nf4 ...   # or a script

The launcher adds the turn-taking callback first in every transformers Trainer the program builds,
so its step_begin wait falls before any step timer starts. $DROPSWEEP_LOCKSTEP names the referee's
socket; the time each step held the turn (held_s) and when (spans, time.monotonic, one clock for
every process of the machine) go to the JSON file $DROPSWEEP_LOCKSTEP_OUT names.
Without a referee the callback does nothing.
"""
from __future__ import annotations

import gc
import json
import os
import runpy
import socket
import sys
import threading
import time

ENV_SOCKET, ENV_OUT = "DROPSWEEP_LOCKSTEP", "DROPSWEEP_LOCKSTEP_OUT"
GO, DONE, END = b"g", b"d", b"e"


class Referee:
    """Hands the turn round the runs connected to a unix socket, one step at a time. Turns begin once
    `expected` runs are connected, or as soon as one of them has finished (call `finished()` as each
    run's process exits, connected or not), so a run that dies before training never stalls the other.
    A run that connects late joins the round."""

    def __init__(self, path: str, expected: int, start_timeout: float = 900.0):
        self.path, self.expected, self.start_timeout = path, expected, start_timeout
        if os.path.exists(path):
            os.unlink(path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(expected)
        self.server.setblocking(False)
        self.done = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="lockstep-referee", daemon=True)
        self._thread.start()

    def finished(self) -> None:
        with self._lock:
            self.done += 1

    def _accept(self, clients: list[socket.socket]) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except (BlockingIOError, OSError):
                return
            conn.setblocking(True)
            clients.append(conn)

    def _serve(self) -> None:
        clients: list[socket.socket] = []
        connected, started, since = 0, False, time.monotonic()
        while True:
            before = len(clients)
            self._accept(clients)
            connected += len(clients) - before
            with self._lock:
                done = self.done
            if not started:
                started = connected >= self.expected or done > 0 or time.monotonic() - since > self.start_timeout
            if not started or not clients:
                if done >= self.expected:
                    break
                time.sleep(0.02)
                continue
            for conn in list(clients):
                try:
                    conn.sendall(GO)
                    reply = conn.recv(1)
                except OSError:
                    reply = b""
                if reply != DONE:  # ended, or the process went away
                    clients.remove(conn)
                    conn.close()

    def close(self) -> None:
        self._thread.join(timeout=5)
        self.server.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def _turn_callback():
    import torch
    from transformers import TrainerCallback

    class TakeTurns(TrainerCallback):
        """Waits for the turn at on_step_begin and hands it back at the next one (or at train end),
        recording how long each step held it."""

        def __init__(self, path: str, out: str | None):
            self.path, self.out = path, out
            self.sock: socket.socket | None = None
            self.since: float | None = None
            self.spans: list[tuple[float, float]] = []  # (got the turn, handed it back), time.monotonic
            self.gc_s: list[float] = []  # time in the garbage collector during each turn
            self._gc_started: float | None = None
            self._gc_total = 0.0
            self.objects_at_start: int | None = None

        def _gc_timer(self, phase: str, info: dict) -> None:
            if phase == "start":
                self._gc_started = time.perf_counter()
            elif self._gc_started is not None:
                self._gc_total += time.perf_counter() - self._gc_started
                self._gc_started = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.objects_at_start = len(gc.get_objects())
            gc.callbacks.append(self._gc_timer)
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(self.path)
            except OSError:
                self.sock = None  # no referee: run free

        def _hand_back(self, code: bytes) -> None:
            if self.since is None:
                return
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            self.spans.append((self.since, time.monotonic()))
            self.gc_s.append(self._gc_total)
            self._gc_total = 0.0
            self.since = None
            self._send(code)

        def _send(self, code: bytes) -> None:
            try:
                self.sock.sendall(code)
            except OSError:
                self.sock = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.sock is None:
                return
            self._hand_back(DONE)
            try:
                if self.sock.recv(1) != GO:
                    raise OSError("referee gone")
            except OSError:
                self.sock = None
                return
            self.since = time.monotonic()
            self._gc_total = 0.0

        def on_train_end(self, args, state, control, **kwargs):
            if self.sock is not None:
                if self.since is not None:
                    self._hand_back(END)
                else:
                    self._send(END)
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None
            if self.out:
                with open(self.out, "w") as f:
                    json.dump({"held_s": [end - start for start, end in self.spans], "spans": self.spans,
                               "gc_s": self.gc_s, "objects_at_start": self.objects_at_start,
                               "gc_frozen": gc.get_freeze_count()}, f)

    return TakeTurns


def install(path: str, out: str | None) -> None:
    """Put a turn-taking callback first in every Trainer built from now on."""
    from transformers import Trainer

    take_turns = _turn_callback()
    original = Trainer.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.callback_handler.callbacks.insert(0, take_turns(path, out))

    Trainer.__init__ = __init__


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv == ["-m"]:
        raise SystemExit("usage: python -m benchmarks.lockstep (-m MODULE | SCRIPT) [ARGS...]")
    if os.environ.get(ENV_SOCKET):
        install(os.environ[ENV_SOCKET], os.environ.get(ENV_OUT))
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
