"""metrics.jsonl on --resume: cut back to the checkpoint's step, so the file is one timeline (no step twice)."""
import json

from shardplan.launch.train.metrics import truncate_to_step


def _write(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_steps_past_the_checkpoint_are_dropped_and_returned(tmp_path):
    path = tmp_path / "metrics.jsonl"
    earlier = [{"step": 1, "loss": 6.0}, {"step": 2, "loss": 5.5}, {"event": "resume", "from_step": 2},
               {"step": 3, "loss": 5.2}, {"step": 4, "loss": 5.0}]
    killed = [{"step": 5, "loss": 4.9}, {"step": 6, "loss": 4.8}]
    _write(path, earlier + killed, tail='{"step": 7, "lo')   # the kill tore the last line
    dropped = truncate_to_step(path, 4)
    assert _rows(path) == earlier
    assert dropped == killed
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_a_finished_runs_summary_at_the_checkpoint_stays(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 6.0}, {"step": 2, "loss": 5.5}, {"event": "summary", "steps": 2}]
    _write(path, rows)
    assert truncate_to_step(path, 2) == [] and _rows(path) == rows
    assert truncate_to_step(path, 1) == [{"step": 2, "loss": 5.5}] and _rows(path) == rows[:1]


def test_no_file_is_nothing_to_cut(tmp_path):
    assert truncate_to_step(tmp_path / "metrics.jsonl", 3) == []
    assert not (tmp_path / "metrics.jsonl").exists()
