"""The engine must not outlive the control plane that supervises it: an orphaned engine holds the GPU memory
and the socket path that the next engine needs."""
import subprocess

from conftest import EngineProcess


def test_exits_when_the_supervisor_closes_stdin(tiny_dir, tmp_path):
    eng = EngineProcess(["--model", str(tiny_dir), "--listen", f"unix:{tmp_path}/e.sock", "--exit-with-stdin"],
                        stdin=subprocess.PIPE)
    try:
        assert eng.wait_ready()["status"] == "ready"
        eng.proc.stdin.close()  # what the kernel does to the pipe when the parent dies, kill -9 included
        assert eng.proc.wait(30) == 0
    finally:
        if eng.proc.poll() is None:
            eng.proc.kill()


def test_without_the_flag_stdin_eof_is_ignored(tiny_dir, tmp_path):
    eng = EngineProcess(["--model", str(tiny_dir), "--listen", f"unix:{tmp_path}/e.sock"], stdin=subprocess.DEVNULL)
    try:
        assert eng.wait_ready()["status"] == "ready"
        try:
            eng.proc.wait(2)
            raise AssertionError("the engine exited on stdin EOF without --exit-with-stdin")
        except subprocess.TimeoutExpired:
            pass
    finally:
        eng.stop()
