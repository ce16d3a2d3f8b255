"""Run the search carried by the cluster YAML itself, on the cluster's head node.

    ray up search.yaml
    ray submit search.yaml docker/ray_search.py            # extra args go to `vitprune search`

Ray copies the cluster YAML to the head node as ~/ray_bootstrap_config.yaml, with the free-form
`metadata` key intact; vitprune reads its spec from `metadata.vitprune` and joins the running
cluster (--address auto), so every trial is dispatched to the cluster's workers.
"""

import os
import sys

from vitprune.cli import main

config = os.path.expanduser("~/ray_bootstrap_config.yaml")
sys.exit(main(["search", config, "--address", "auto", *sys.argv[1:]]))
