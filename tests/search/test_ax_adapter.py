"""The Ax internals vitprune uses still exist in the installed Ax; an upgrade that removes one fails
here, naming the adapter function to fix, instead of deep inside a search."""

import ax
import pytest
from ax import Client

from vitprune.search import ax_adapter
from vitprune.search.generation import GenerationConfig
from vitprune.search.optimizer import Optimizer


@pytest.fixture(scope="module")
def instances():
    optimizer = Optimizer()
    optimizer.configure(
        ["a", "b"], objective="accuracy", generation=GenerationConfig(initial_trials=2, seed=3)
    )
    (index,) = optimizer.suggest(1)
    client = optimizer._client
    run = ax_adapter.experiment(client).trials[index].generator_runs[0]
    return {Client: client, type(run): run}


@pytest.mark.parametrize(
    ("owner", "member"), sorted(ax_adapter.PRIVATE_MEMBERS, key=lambda key: (key[0].__name__, key[1]))
)
def test_every_private_ax_member_vitprune_uses_exists(instances, owner, member):
    where = ax_adapter.PRIVATE_MEMBERS[(owner, member)]
    instance = next(value for cls, value in instances.items() if issubclass(cls, owner))
    assert hasattr(instance, member), (
        f"ax-platform {ax.__version__} has no {owner.__name__}.{member}: update "
        f"vitprune/search/ax_adapter.py ({where}) before raising the ax-platform pin"
    )


def test_a_snapshot_round_trip_keeps_the_trials_and_the_seed(instances):
    client = instances[Client]
    restored = ax_adapter.from_snapshot(
        ax_adapter.to_snapshot(client), random_seed=ax_adapter.random_seed(client)
    )
    assert ax_adapter.random_seed(restored) == ax_adapter.random_seed(client)
    assert set(ax_adapter.experiment(restored).trials) == set(ax_adapter.experiment(client).trials)
    node, key, kwargs = ax_adapter.generator_run_info(
        next(iter(ax_adapter.experiment(restored).trials.values())).generator_runs[0]
    )
    assert (node, key, kwargs.get("seed")) == ("Sobol", "Sobol", 3)


def test_no_other_module_touches_ax_internals():
    """Private Ax members are accessed only in the adapter (``obj._member``, not vitprune's own
    ``self._member``)."""
    import re
    from pathlib import Path

    root = Path(ax_adapter.__file__).parent
    members = {member for _, member in ax_adapter.PRIVATE_MEMBERS}
    offenders = [
        f"{path.name}: {member}"
        for path in sorted(root.glob("*.py"))
        if path.name != "ax_adapter.py"
        for member in members
        if re.search(rf"(?<!\bself)\.{member}\b", path.read_text())
    ]
    assert not offenders
