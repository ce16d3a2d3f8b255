"""The trainable's resume rule: a trial that already finished reports its saved result."""

import json

from vitprune.search.rundir import RunDir
from vitprune.search.trainable import _finished_result


def test_a_finished_trial_is_recognised_by_its_folder_and_point(tmp_path):
    point = {"heads": 0.1, "mlp": 1 / 3}
    directory = RunDir(tmp_path).trial(7)
    assert directory == tmp_path / "trials" / "0007"
    assert _finished_result(directory, point) is None  # never ran
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"")  # killed between the model and metrics.json
    assert _finished_result(directory, point) is None
    saved = {"trial": 7, "point": point, "accuracy": 0.96, "macs": 1.5e6}
    (directory / "metrics.json").write_text(json.dumps(saved))
    assert _finished_result(directory, point) == {"accuracy": 0.96, "macs": 1.5e6}
    assert _finished_result(directory, point | {"mlp": 0.5}) is None  # another point: run it
