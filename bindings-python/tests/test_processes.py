"""Real processes: Ctrl-C during run_worker, two worker processes sharing PostgreSQL, the
example script."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tasker
from conftest import BACKEND

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import os, sys, time, tasker
    engine = tasker.Engine(sys.argv[1], schema=(sys.argv[2] or None))
    log = open(sys.argv[3], "a")

    @engine.handler("slow")
    def slow(step):
        log.write(f"start {step.task_id} {os.getpid()}\\n"); log.flush()
        time.sleep(float(sys.argv[4]))
        log.write(f"end {step.task_id} {os.getpid()}\\n"); log.flush()
        return {"pid": os.getpid()}

    print("ready", flush=True)
    engine.run_worker(concurrency=2, until_idle=(sys.argv[5] == "idle"))
    print("stopped cleanly", flush=True)
""")


def spawn(tmp_path, db, sleep, mode):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "runs.log"
    return subprocess.Popen(
        [sys.executable, str(script), db["url"], db.get("schema") or "", str(log), str(sleep), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ), log


def test_ctrl_c_during_run_worker_lets_in_flight_steps_finish(engine, db, tmp_path):
    engine.register_template("name: slow\nstep_templates:\n  - {name: slow}\n")
    ids = [engine.create_task("slow") for _ in range(3)]
    proc, log = spawn(tmp_path, db, 0.5, "forever")
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 20
    while not (log.exists() and "start" in log.read_text()):
        assert time.time() < deadline, "no step started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped cleanly" in out
    lines = log.read_text().split()
    assert lines.count("start") == lines.count("end") >= 1, log.read_text()
    states = [engine.get_task(i)["status"] for i in ids]
    assert "in_progress" not in [s["status"] for i in ids for s in engine.get_task(i)["steps"]], states
    engine.handler("slow")(lambda s: {"pid": os.getpid()})
    engine.run_worker(until_idle=True)
    assert all(engine.get_task(i)["status"] == "complete" for i in ids)


@pytest.mark.skipif(BACKEND != "postgres", reason="several worker processes need PostgreSQL (TASKER_TEST_BACKEND=postgres)")
def test_two_python_worker_processes_share_postgresql(engine, db, tmp_path):
    engine.register_template("name: slow\nstep_templates:\n  - {name: slow}\n")
    ids = [engine.create_task("slow") for _ in range(40)]
    a, log = spawn(tmp_path, db, 0.05, "idle")
    b, _ = spawn(tmp_path, db, 0.05, "idle")
    for p in (a, b):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    pids = set()
    for i in ids:
        t = engine.get_task(i)
        assert t["status"] == "complete"
        assert t["steps"][0]["attempts"] == 1
        pids.add(t["steps"][0]["results"]["pid"])
    assert pids == {a.pid, b.pid}, "both processes did work"
    assert log.read_text().split().count("start") == 40


def test_the_readme_quickstart_runs(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples/python/quickstart.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "HELLO WORLD!"


def test_the_python_example_runs(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples/python/orders.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("complete"), out.stdout
    assert "('charge', 'complete', 2)" in out.stdout
