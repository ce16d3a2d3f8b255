"""Every use of Ax internals, in one place: the debt of pinning ``ax-platform < 1.4``.

Ax 1.3's public ``Client`` has no accessor for what a resumable, inspectable search needs: the
experiment object, a JSON snapshot that includes the generation strategy, the random seed (not
part of the snapshot), saving a trial abandoned with a reason, which generation node proposed a
trial, the most recently fitted adapter, and rebinding Ax's process-wide SQL engine. Each function
below is the only place its private member is touched. ``PRIVATE_MEMBERS`` lists them all, and
``tests/search/test_ax_adapter.py`` checks every one against the installed Ax, so an upgrade that
removes one fails loudly, naming the function to fix, rather than deep inside a search.
"""

from __future__ import annotations

from typing import Any

from ax import Client, StorageConfig
from ax.core.base_trial import BaseTrial
from ax.core.experiment import Experiment
from ax.core.generator_run import GeneratorRun
from ax.generation_strategy.generation_strategy import GenerationStrategy

# (class, member) → the function here that uses it.
PRIVATE_MEMBERS: dict[tuple[type, str], str] = {
    (Client, "_experiment"): "experiment",
    (Client, "_to_json_snapshot"): "to_snapshot",
    (Client, "_from_json_snapshot"): "from_snapshot",
    (Client, "_random_seed"): "random_seed / set_random_seed",
    (Client, "_generation_strategy"): "generation_strategy",
    (Client, "_save_or_update_trials_in_db_if_possible"): "save_trials",
    (GeneratorRun, "_generation_node_name"): "generator_run_info",
    (GeneratorRun, "_generator_key"): "generator_run_info",
    (GeneratorRun, "_generator_kwargs"): "generator_run_info",
}


def experiment(client: Client) -> Experiment:
    """The client's experiment (``Client._experiment``)."""
    return client._experiment


def generation_strategy(client: Client) -> GenerationStrategy:
    """The client's generation strategy (``Client._generation_strategy``)."""
    return client._generation_strategy


def fitted_adapter(client: Client) -> Any:
    """The adapter of the most recently fitted model, or ``None`` before any fit."""
    return generation_strategy(client).adapter


def random_seed(client: Client) -> int | None:
    """The seed the client was created with (``Client._random_seed``)."""
    return client._random_seed


def set_random_seed(client: Client, seed: int | None) -> None:
    """Give a client restored from a snapshot the seed it was created with."""
    client._random_seed = seed


def to_snapshot(client: Client) -> dict[str, Any]:
    """The experiment and generation strategy as JSON-ready data (what ``save_to_json_file`` writes)."""
    return client._to_json_snapshot()


def from_snapshot(
    snapshot: dict[str, Any], *, random_seed: int | None, storage_config: StorageConfig | None = None
) -> Client:
    """A client continuing ``snapshot`` (what ``load_from_json_file`` runs after reading the file),
    with the seed the snapshot does not hold. Ax's decoder consumes ``snapshot`` (it pops keys):
    decode each snapshot once."""
    client = Client._from_json_snapshot(snapshot=snapshot, storage_config=storage_config)
    set_random_seed(client, random_seed)
    return client


def save_trials(client: Client, trials: list[BaseTrial]) -> None:
    """Save ``trials`` to the client's SQL storage, if it has one (a no-op otherwise)."""
    client._save_or_update_trials_in_db_if_possible(experiment=experiment(client), trials=trials)


def generator_run_info(run: GeneratorRun) -> tuple[str | None, str | None, dict[str, Any]]:
    """``(generation node, generator key, generator kwargs)`` of a generator run."""
    return run._generation_node_name, run._generator_key, dict(run._generator_kwargs or {})


def delete_stored_experiment(name: str) -> None:
    """Remove experiment ``name`` and its generation strategy from the configured SQL storage."""
    from ax.storage.sqa_store.db import session_scope
    from ax.storage.sqa_store.delete import delete_experiment, delete_generation_strategy
    from ax.storage.sqa_store.sqa_classes import SQAExperiment

    with session_scope() as session:
        stored = session.query(SQAExperiment).filter_by(name=name).one_or_none() is not None
    if stored:
        delete_generation_strategy(name)
        delete_experiment(name)


def storage_config(url: str | None) -> StorageConfig | None:
    """Ax SQL storage at ``url`` (e.g. ``sqlite:////abs/path/ax.db``), its tables created if missing.

    Ax keeps one SQL engine per process, bound by the first ``init_engine_and_session_factory``
    and silently kept after that. Every operation that saves therefore rebinds it to ``url``
    first, so that two searches in one process (a benchmark) each write to their own database.
    Ax imports ``tabulate`` when it saves but does not declare it (vitprune does).
    """
    if url is None:
        return None
    from ax.storage.sqa_store import db

    engine = None if db.SESSION_FACTORY is None else db.get_engine()
    if engine is None or engine.url.render_as_string(hide_password=False) != url:
        db.init_engine_and_session_factory(url=url, force_init=engine is not None)
        db.create_all_tables(db.get_engine())
    return StorageConfig(url=url)
