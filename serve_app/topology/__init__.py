"""Node topologies: a local multi-node Ray cluster (``local_cluster``), node names (``nodes``), a
traditional model split across nodes (``pipeline``) and ``accuwatt cluster up|down|status`` (``cli``)."""

from serve_app.topology.cli import register

__all__ = ["register"]
