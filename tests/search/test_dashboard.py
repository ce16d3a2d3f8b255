"""The dashboard without a browser: what it assembles from a run directory at every stage of a
search, its routes, and how it turns Ax's analysis cards into JSON. The run directories here are
fabricated with the real decoder, policies and Ax optimizer (no Ray, no training)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vitprune.search.dashboard import Dashboard, make_server
from vitprune.search.dashboard_data import (
    best_so_far,
    decode_point,
    finite,
    front_of,
    layer_structure,
    load_snapshot,
    state_document,
)
from vitprune.search.records import TrialRecord
from vitprune.search.rundir import RunDir
from vitprune.search.spec import SearchSpec, SelectionSpec
from vitprune.spaces import Architecture, LayerPolicy, Policy, Scores, macs, params
from vitprune.spaces.budget import Budget
from vitprune.spaces.space import decode

BASE = Architecture(
    model="vitprune_digits_vit",
    model_args={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": [16, 16], "num_classes": 10},
    embed_dim=32,
    depth=2,
    num_heads=2,
    head_dim=16,
    mlp_hidden=128,
    in_chans=1,
    patch_size=(4, 4),
    grid_size=(4, 4),
    num_prefix_tokens=1,
    class_token=True,
    num_classes=10,
    num_classifiers=1,
    global_pool="token",
    qkv_bias=True,
    proj_bias=True,
    mlp_bias=True,
    patch_bias=True,
    norm_bias=True,
    layer_scale=False,
    pos_embed_len=17,
    pre_norm=False,
    final_norm=True,
)
DENSE = Policy.keep_all(BASE)
SCORES = Scores(  # any ranking does: the dashboard only needs the decoder to run as trials do
    criterion="test",
    heads=((2.0, 1.0), (1.0, 2.0)),
    qk=tuple(tuple(tuple(float((7 * d + h) % 16) for d in range(16)) for h in range(2)) for _ in range(2)),
    v=tuple(tuple(tuple(float((5 * d + h) % 16) for d in range(16)) for h in range(2)) for _ in range(2)),
    mlp=tuple(tuple(float((3 * n + layer) % 128) for n in range(128)) for layer in range(2)),
    attn_layers=(2.0, 1.0),
    act_layers=(1.0, 2.0),
)
SPEC = SearchSpec.model_validate(
    {
        "name": "fabricated",
        "model": {"name": "vitprune_digits_vit", "args": {"depth": 2, "embed_dim": 32, "num_heads": 2}},
        "budget": {"macs": "50%"},
        "space": {"dimensions": ["heads", "qk", "v", "mlp", "tokens", "depth"]},
        "trials": {"total": 5, "concurrent": 2, "initial": 3},
    }
)
SPACE = SPEC.space.build(BASE.depth)
BUDGET = Budget("macs", 0.5 * macs(DENSE))
POINTS = [
    {name: (0.13 * (i + 1) + 0.07 * j) % 1 for j, name in enumerate(SPACE.parameters())} for i in range(4)
]
ACCURACY = {0: 0.81, 2: 0.86}


def _write(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def _phase(run: RunDir, name: str) -> None:
    _write(run.phase, {"phase": name, "done": 0, "total": None, "unit": "", "updated": 1.0, "history": []})


def _fit(point: dict[str, float]) -> Policy:
    return decode(point, space=SPACE, base=BASE, scores=SCORES, budget=BUDGET, measure=macs).policy


def _prepared(root: Path) -> RunDir:
    """A run directory as the driver leaves it once prepared: spec, plan, dense model, scores."""
    run = RunDir(root)
    run.root.mkdir(parents=True)
    run.spec.write_text(SPEC.model_dump_json())
    _phase(run, "trials")
    (run.dense).mkdir()
    (run.dense / "policy.json").write_text(DENSE.to_json())
    run.scores.write_text(SCORES.to_json())
    _write(
        run.plan,
        {
            "format": "vitprune.plan/1",
            "spec": SPEC.model_dump(mode="json"),
            "dense_test_accuracy": 0.9,
            "budget": {"metric": "macs", "limit": BUDGET.limit},
            "dense_cost": macs(DENSE),
        },
    )
    return run


def _trial_on_disk(run: RunDir, index: int, point: dict[str, float], accuracy: float) -> dict[str, float]:
    """A completed trial's folder, as the trainable leaves it; returns the metrics it reports."""
    policy = _fit(point)
    run.trial(index).mkdir(parents=True, exist_ok=True)
    (run.trial(index) / "policy.json").write_text(policy.to_json())
    metrics = {
        "accuracy": accuracy,
        "macs": macs(policy),
        "params": params(policy),
        "latency_ms": 2.0 + index,
    }
    structure = {f"structure_{key}": value for key, value in policy.summary().items()}
    document = {"trial": index, "point": point, **metrics, **structure, "finetune_seconds": 3.5}
    _write(run.trial(index) / "metrics.json", document)
    return metrics


def _trials_on_disk(
    run: RunDir, points: dict[int, dict[str, float]] | list[dict[str, float]] = POINTS
) -> None:
    """Trials 0 and 2 completed, 1 failed, 3 running (as ``progress.json`` says)."""
    for index, accuracy in ACCURACY.items():
        _trial_on_disk(run, index, points[index], accuracy)
    run.trial(1).mkdir(parents=True, exist_ok=True)
    (run.trial(1) / "error.txt").write_text("RuntimeError: injected failure\n")
    _write(
        run.progress, {"planned": 5, "completed": 2, "failed": 1, "running": [3], "queued": [], "eta_s": 60.0}
    )


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    """A prepared run whose Ax experiment holds trials 0 and 2 (completed), 1 (failed) and 3
    (running), like a search in progress."""
    from vitprune.search import GenerationConfig, Optimizer

    run = _prepared(tmp_path_factory.mktemp("search") / "run")
    optimizer = Optimizer()
    optimizer.configure(
        list(SPACE.parameters()),
        objective="accuracy",
        tracked_metrics=["macs", "params", "latency_ms"],
        generation=GenerationConfig(initial_trials=3, seed=0, num_restarts=2, raw_samples=64),
    )
    created = optimizer.suggest(2)
    optimizer.complete(0, _trial_on_disk(run, 0, created[0], ACCURACY[0]))
    optimizer.fail(1, "Tune trial raised after its retries (see its error.txt)")
    created |= optimizer.suggest(2)
    assert sorted(created) == [0, 1, 2, 3]
    optimizer.complete(2, _trial_on_disk(run, 2, created[2], ACCURACY[2]))
    _trials_on_disk(run, created)
    optimizer.snapshot(run.experiment)
    return run, created


# ------------------------------------------------------------------------------ stages of a run
def test_a_run_directory_that_only_has_its_spec_shows_the_phase(tmp_path):
    run = RunDir(tmp_path)
    run.spec.write_text(SPEC.model_dump_json())
    _phase(run, "dense training")
    state = state_document(run)
    assert state["phase"]["phase"] == "dense training"
    assert state["phases"] == ["dense training", "criteria", "trials", "finished"]
    # a search that ends with the final selection shows it as a phase
    run.spec.write_text(SPEC.model_copy(update={"selection": SelectionSpec(seeds=2)}).model_dump_json())
    assert state_document(run)["phases"] == ["dense training", "criteria", "trials", "selection", "finished"]
    assert state["trials"] == [] and state["best"] is None and state["front"] == []
    assert state["budget"] | {"batch_size": None} == {
        "metric": "macs",
        "limit": None,
        "dense_cost": None,
        "share": None,
        "requested": "50%",
        "batch_size": None,
    }
    assert state["dense"] is None and state["planned"] == 5


def test_an_empty_run_directory_has_no_phase_yet(tmp_path):
    state = state_document(RunDir(tmp_path))
    assert state["phase"] is None and state["trials"] == [] and state["budget"]["metric"] is None


def test_once_prepared_the_budget_and_the_dense_model_show_and_running_trials_are_listed(tmp_path):
    run = _prepared(tmp_path / "run")
    _write(run.progress, {"planned": 5, "completed": 0, "failed": 0, "running": [0, 1], "queued": [2]})
    state = state_document(run)
    assert state["budget"]["share"] == pytest.approx(0.5) and state["budget"]["limit"] == BUDGET.limit
    assert state["dense"]["macs"] == macs(DENSE) and state["dense"]["test_accuracy"] == 0.9
    assert state["dense"]["heads_total"] == 4 and state["cost_axis"] == "macs"
    assert [(row["trial"], row["status"]) for row in state["trials"]] == [
        (0, "RUNNING"),
        (1, "RUNNING"),
        (2, "QUEUED"),
    ]


def test_before_ax_is_loaded_trials_come_from_their_folders(tmp_path):
    run = _prepared(tmp_path / "run")
    _trials_on_disk(run)
    state = state_document(run)
    rows = {row["trial"]: row for row in state["trials"]}
    assert {index: row["status"] for index, row in rows.items()} == {
        0: "COMPLETED",
        1: "FAILED",
        2: "COMPLETED",
        3: "RUNNING",
    }
    assert rows[1]["reason"] == "RuntimeError: injected failure" and rows[1]["accuracy"] is None
    policy = _fit(POINTS[2])
    assert rows[2]["macs_ratio"] == pytest.approx(macs(policy) / macs(DENSE))
    assert rows[2]["cost"] == pytest.approx(100 * macs(policy) / macs(DENSE)) and rows[2]["cost"] <= 50
    assert rows[2]["structure"] == policy.summary() and rows[2]["finetune_seconds"] == 3.5
    assert rows[2]["node"] is None and rows[2]["feasible"] is True
    assert state["best"] == 2 and state["best_so_far"] == [[0, 0.81], [2, 0.86]]
    assert not state["snapshot"]["loaded"] and state["snapshot"]["trials"] == 0


def test_a_stopped_search_shows_its_running_trials_as_interrupted(snapshot_run, tmp_path):
    run, _ = snapshot_run
    state = state_document(run, load_snapshot(run))
    assert [row["status"] for row in state["trials"]] == ["COMPLETED", "FAILED", "COMPLETED", "RUNNING"]
    stopped = RunDir(tmp_path / "stopped")
    import shutil

    shutil.copytree(run.root, stopped.root)
    _phase(stopped, "interrupted")
    state = state_document(stopped, load_snapshot(stopped))
    assert [row["status"] for row in state["trials"]][3] == "INTERRUPTED"


def test_a_trial_that_ended_after_the_snapshot_was_read_shows_as_its_folder_says(snapshot_run, tmp_path):
    import shutil

    run, created = snapshot_run
    snapshot = load_snapshot(run)
    ahead = RunDir(tmp_path / "ahead")
    shutil.copytree(run.root, ahead.root)
    _trial_on_disk(ahead, 3, created[3], 0.84)  # trial 3 finished; experiment.json not read since
    _write(ahead.progress, {"planned": 5, "completed": 3, "failed": 1, "running": [], "queued": []})
    row = state_document(ahead, snapshot)["trials"][3]
    assert row["status"] == "COMPLETED" and row["accuracy"] == 0.84 and row["node"] == "Sobol"


def test_the_ax_snapshot_gives_nodes_failure_reasons_and_axs_best(snapshot_run):
    run, _ = snapshot_run
    snapshot = load_snapshot(run)
    state = state_document(run, snapshot)
    rows = {row["trial"]: row for row in state["trials"]}
    assert {row["node"] for row in rows.values()} == {"Sobol"}
    assert rows[1]["status"] == "FAILED"
    assert rows[1]["reason"] == "RuntimeError: injected failure"  # error.txt says more than Ax's reason
    assert snapshot.best == 2 and state["best"] == 2 and not snapshot.multi_objective
    assert rows[0]["accuracy"] == pytest.approx(0.81) and state["snapshot"]["loaded"]
    # the page redraws a running trial's structure when a newer snapshot knows more trials
    assert state["snapshot"]["trials"] == len(snapshot.records) == 4


def test_a_pareto_search_shows_axs_front_against_latency(tmp_path):
    run = _prepared(tmp_path / "run")
    _trials_on_disk(run)
    records = [
        TrialRecord(i, status, POINTS[i], {}, "Sobol", "Sobol", None, None, None, 0.0, 0.0)
        for i, status in ((0, "COMPLETED"), (1, "FAILED"), (2, "COMPLETED"))
    ]
    spec = json.loads(run.spec.read_text()) | {"objective": "accuracy, -latency_ms"}
    plan = json.loads(run.plan.read_text())
    _write(run.plan, plan | {"spec": plan["spec"] | {"objective": "accuracy, -latency_ms"}})
    _write(run.spec, spec)
    from vitprune.search.dashboard_data import Snapshot

    state = state_document(run, Snapshot(tuple(records), multi_objective=True, front=(0, 2)))
    assert state["pareto"] and state["cost_axis"] == "latency_ms" and state["best"] is None
    assert state["front"] == [0, 2] and state["fronts"]["latency_ms"] == [0, 2]
    assert state["trials"][2]["cost"] == 4.0  # measured latency, in ms


def test_a_latency_budget_marks_trials_measured_over_the_limit(tmp_path):
    run = _prepared(tmp_path / "run")
    _trials_on_disk(run)
    plan = json.loads(run.plan.read_text())
    _write(run.plan, plan | {"budget": {"metric": "latency_ms", "limit": 3.0}, "dense_cost": 5.0})
    state = state_document(run)
    rows = {row["trial"]: row for row in state["trials"]}
    assert state["cost_axis"] == "latency_ms" and state["dense"]["latency_ms"] == 5.0
    assert "latency model" in state["phases"]
    assert rows[0]["feasible"] is True and rows[2]["feasible"] is False  # 2.0 and 4.0 ms
    assert rows[0]["latency_ratio"] == pytest.approx(0.4)
    assert state["best"] == 0 and state["best_so_far"] == [[0, 0.81]]


# ------------------------------------------------------------------------------ pure pieces
def test_the_front_keeps_the_points_no_other_point_beats_on_both():
    points = [
        (0, 50.0, 0.80),
        (1, 40.0, 0.70),
        (2, 45.0, 0.82),
        (3, 45.0, 0.60),
        (4, 60.0, 0.82),
        (5, 60.0, 0.9),
    ]
    assert front_of(points) == [1, 2, 5]
    assert front_of([]) == []


def test_best_so_far_is_the_running_maximum_of_feasible_trials():
    rows = [
        {"trial": 0, "accuracy": 0.5, "feasible": True},
        {"trial": 1, "accuracy": 0.9, "feasible": False},
        {"trial": 2, "accuracy": None, "feasible": None},
        {"trial": 3, "accuracy": 0.7, "feasible": True},
        {"trial": 4, "accuracy": 0.6, "feasible": True},
    ]
    assert best_so_far(rows) == [(0, 0.5), (3, 0.7), (4, 0.7)]


def test_non_finite_values_become_null_for_the_browser():
    assert finite({"a": [1.0, float("nan")], "b": float("inf"), "c": "x"}) == {
        "a": [1.0, None],
        "b": None,
        "c": "x",
    }


def test_layer_structure_counts_what_each_layer_keeps():
    layers = (
        LayerPolicy(True, (0,), ((0, 1, 2),), ((4, 5),), False, tuple(range(40)), 12),
        LayerPolicy(False, (), (), (), True, tuple(range(128)), 12),
    )
    keys = ("layer", "attention", "heads", "qk", "v", "activation", "mlp", "tokens", "embed")
    assert layer_structure(Policy(base=BASE, layers=layers)) == [
        dict(zip(keys, (0, True, 1, 3, 2, False, 40, 12, 32), strict=True)),
        dict(zip(keys, (1, False, 0, 0, 0, True, 128, 12, 32), strict=True)),
    ]


def test_a_running_trial_decodes_to_the_policy_the_trial_fine_tunes(snapshot_run):
    run, created = snapshot_run
    assert decode_point(run, created[3]) == _fit(created[3])
    dashboard = Dashboard(run)
    dashboard.snapshot.get()
    dashboard.snapshot.wait(60)
    detail = dashboard.trial(3)
    assert detail["status"] == "RUNNING" and detail["source"] == "decoded" and detail["node"] == "Sobol"
    assert detail["layers"] == layer_structure(_fit(created[3]))
    assert dashboard.trial(0)["source"] == "trial" and dashboard.trial(0)["metrics"]["accuracy"] == 0.81
    failed = dashboard.trial(1)
    assert failed["layers"] is None and failed["reason"] == "RuntimeError: injected failure"
    assert dashboard.trial(7) is None


def test_watched_values_are_computed_in_the_background_and_again_when_the_file_changes(tmp_path, caplog):
    from vitprune.search.dashboard import Watched

    path = tmp_path / "experiment.json"
    calls = []

    def compute() -> int:
        calls.append(path.read_text())
        if path.read_text() == "bad":
            raise ValueError("unreadable")
        return len(calls)

    watched = Watched(path, compute, what="test file")
    assert watched.get() == (None, False, None)  # no file: nothing to compute
    path.write_text("good")
    value, _, _ = watched.get()
    assert value is None and watched.wait(60) == 1 and watched.get() == (1, False, None)
    path.write_text("bad")
    os.utime(path, ns=(1, 1))  # a new version, whatever the clock's resolution
    watched.get()
    watched.wait(60)
    assert watched.get() == (1, False, "ValueError: unreadable")  # the last good value stays
    assert caplog.text.count("could not read the test file (ValueError: unreadable)") == 1
    assert calls == ["good", "bad"]


# ------------------------------------------------------------------------------ routes
def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), b""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run = _prepared(tmp_path_factory.mktemp("served") / "run")
    _trials_on_disk(run)
    server = make_server(run, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def test_the_page_is_small_and_loads_plotly_once_from_the_installed_package(served):
    url, server = served
    assert server.server_address[0] == "127.0.0.1"
    status, headers, page = _get(url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert len(page) < 2_000_000 and page.count(b"plotly.min.js") == 1 and b"Plotly.newPlot" not in page
    for asset in ("/static/dashboard.js", "/static/dashboard.css", "/static/analyses.js"):
        status, _, body = _get(url + asset)
        assert status == 200 and len(body) < 100_000, asset
    import plotly

    expected = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    status, headers, body = _get(url + "/static/plotly.min.js")
    assert status == 200 and body == expected and "max-age=31536000" in headers["Cache-Control"]
    status, headers, body = _get(url + "/static/plotly.min.js", {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == expected
    assert _get(url + "/analyses")[0] == 200 and _get(url + "/dashboard.html")[0] == 200


def test_the_state_is_json_and_unchanged_state_is_not_sent_again(served):
    url, _ = served
    status, headers, body = _get(url + "/api/state")
    state = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert [row["status"] for row in state["trials"]] == ["COMPLETED", "FAILED", "COMPLETED", "RUNNING"]
    assert _get(url + "/api/state", {"If-None-Match": headers["ETag"]})[0] == 304
    status, _, body = _get(url + "/api/trial/0")
    assert status == 200 and json.loads(body)["layers"] == layer_structure(_fit(POINTS[0]))


def test_a_port_in_use_is_one_line_and_another_host_is_a_warning(served, caplog):
    from vitprune.spaces import InputError

    _, server = served
    port = server.server_address[1]
    with pytest.raises(
        InputError, match=rf"^--port {port}: cannot listen on 127.0.0.1:{port} \(already in use\)$"
    ):
        make_server(server.dashboard.run, port=port)
    with pytest.raises(InputError, match=r"^--host no.such.host.invalid: not an address of this machine$"):
        make_server(server.dashboard.run, host="no.such.host.invalid", port=0)
    with caplog.at_level(logging.WARNING, logger="vitprune.search"):
        wide = make_server(server.dashboard.run, host="0.0.0.0", port=0)
    wide.server_close()
    assert "anyone who can reach this machine sees the page" in caplog.text


def test_once_the_state_reads_the_ax_snapshot_in_the_calling_thread(snapshot_run):
    from vitprune.search.dashboard import state

    run, _ = snapshot_run
    document = state(run)
    assert document["snapshot"]["loaded"] and document["best"] == 2
    assert [row["node"] for row in document["trials"]] == ["Sobol"] * 4


@pytest.mark.parametrize(
    "path",
    [
        "/spec.json",
        "/plan.json",
        "/experiment.json",
        "/dense/policy.json",
        "/trials/0000/metrics.json",
        "/trials/",
        "/static/",
        "/static/index.html",
        "/static/../spec.json",
        "/static/%2e%2e/spec.json",
        "/api/trial/99",
        "/api/trial/../../spec.json",
        "/api/",
        "//etc/passwd",
    ],
)
def test_nothing_but_the_dashboards_own_routes_answers(served, path):
    url, _ = served
    assert _get(url + path)[0] == 404


# ------------------------------------------------------------------------------ Ax's analyses
def test_ax_cards_become_json_with_markdown_rendered_and_no_plotly_js(snapshot_run):
    import pandas as pd
    import plotly.graph_objects as go
    from ax.analysis.healthcheck.healthcheck_analysis import (
        HealthcheckStatus,
        create_healthcheck_analysis_card,
    )
    from ax.analysis.markdown.markdown_analysis import create_markdown_analysis_card
    from ax.analysis.plotly.plotly_analysis import create_plotly_analysis_card

    from vitprune.search.dashboard_analyses import card_document

    figure = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]), layout={"width": 900, "height": 300})
    plot = card_document(
        create_plotly_analysis_card("P", "A plot", "**Metric** `accuracy`", pd.DataFrame(), figure)
    )
    assert plot["subtitle"] == "<p><strong>Metric</strong> <code>accuracy</code></p>"
    assert plot["figure"]["data"][0]["y"] == [3, 4] and "width" not in plot["figure"]["layout"]
    assert "plotly.js" not in json.dumps(plot) and len(json.dumps(plot)) < 50_000
    text = card_document(
        create_markdown_analysis_card("M", "Notes", "", pd.DataFrame(), "a <b>raw</b> **note**")
    )
    assert text["html"] == "<p>a &lt;b&gt;raw&lt;/b&gt; <strong>note</strong></p>"
    check = create_healthcheck_analysis_card("H", "Health", "fine", pd.DataFrame(), HealthcheckStatus.WARNING)
    assert card_document(check)["status"] == "warning"


def test_failed_ax_analyses_are_one_line_each_and_never_reach_stderr(caplog):
    from vitprune.search.dashboard_analyses import _AxFailures

    ax_log = logging.getLogger(_AxFailures.LOGGER)
    with _AxFailures() as failures, caplog.at_level(logging.INFO):
        ax_log.error("Failed to compute SlicePlot")
        ax_log.error(
            "Traceback (most recent call last):\n  File x, line 1\nValueError: 'latency_ms' is not in list\n"
        )
        ax_log.warning("an unrelated warning")
    assert failures.lines == [{"title": "SlicePlot", "reason": "ValueError: 'latency_ms' is not in list"}]
    assert [record.getMessage() for record in caplog.records if record.name == _AxFailures.LOGGER] == [
        "an unrelated warning"
    ]


@pytest.mark.slow  # Ax fits its models: about 20 s (the browser test draws these cards too)
def test_ax_analyses_of_a_search_leave_failed_cards_out(snapshot_run):
    from vitprune.search.dashboard_analyses import compute_cards

    run, _ = snapshot_run
    result = compute_cards(run)
    assert result["trials"] == 4 and result["cards"]
    for card in result["cards"]:
        assert "Error" not in card["title"] and "Traceback" not in json.dumps(card)
        assert ("figure" in card) or ("html" in card) or ("status" in card)
    for entry in result["left_out"]:
        assert "\n" not in entry["reason"]
