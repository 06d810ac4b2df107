"""Recording and stopping a driver's processes by PID and start time (real processes, no names)."""

import subprocess
import sys

from sweeps import processes


def test_recorded_processes_are_stopped_and_a_reused_pid_is_spared(tmp_path):
    record = tmp_path / "ray" / "processes.json"
    tree = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & wait"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for _ in range(50):  # bash forks its two sleeps
            below = processes.descendants(tree.pid)
            if len(below) >= 2:
                break
            subprocess.run(["sleep", "0.05"])
        recorded = [processes.identify(tree.pid), *below]
        assert None not in recorded and len(recorded) >= 3
        me = processes.identify(bystander.pid)
        impostor = processes.ProcessId(me.pid, me.started + 1)  # same PID, another start: not ours
        processes.record(record, [*recorded, impostor])
        assert set(processes.read(record)) == {*recorded, impostor}
        copy = tmp_path / "copy" / "ray" / "processes.json"  # a copied sweep folder must not stop the original's
        copy.parent.mkdir(parents=True)
        copy.write_text(record.read_text())
        assert processes.read(copy) == [] and processes.stop_recorded(copy) == 0
        assert processes.alive(recorded) == recorded

        assert processes.stop_recorded(record) == len(recorded)
        assert processes.alive(recorded) == [] and not record.exists()
        assert bystander.poll() is None  # the process whose PID merely matched was left alone
        assert processes.stop_recorded(record) == 0  # nothing recorded, nothing stopped
    finally:
        for process in (tree, bystander):
            process.kill()
            process.wait()
