"""icg.study.server.serve_until_stopped: a server stopped by a signal always ends in KeyboardInterrupt (exit 130).

uvicorn re-raises the signal it caught through asyncio's SIGINT handler, which only cancels the serving task; when the
task had no await left, uvicorn's run returned normally and `icg serve` exited 0 (once in a CI run). The race
cannot be forced from outside, so uvicorn's run is replaced by the two endings it can have."""

import pytest
import uvicorn

from icg.study.server import bind, serve_until_stopped


@pytest.mark.parametrize("told_to_stop", [True, False])
def test_a_server_that_returns_after_a_signal_raises_keyboard_interrupt(monkeypatch, told_to_stop):
    def run(self, sockets=None):
        self.should_exit = told_to_stop  # uvicorn's signal handler sets it; nothing else in icg's commands does

    monkeypatch.setattr(uvicorn.Server, "run", run)
    sock = bind("127.0.0.1", 0)
    try:
        if told_to_stop:
            with pytest.raises(KeyboardInterrupt):
                serve_until_stopped(lambda scope, receive, send: None, sock)
        else:
            serve_until_stopped(lambda scope, receive, send: None, sock)
    finally:
        sock.close()
