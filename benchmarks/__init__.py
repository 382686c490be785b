"""Side-by-side benchmarks of llm_multicloud (see docs/benchmarks.md).

Each ``bN_*`` module runs alone (``python -m benchmarks.b2_overhead --quick``) and
exposes ``run(quick=..., out_dir=..., litellm=...) -> dict`` plus ``markdown(result)``;
``python -m benchmarks.run_all`` runs them all and writes ``benchmarks/results/``.
"""

BENCHMARKS = (
    "b1_routing",
    "b2_overhead",
    "b3_streaming",
    "b4_hedging",
    "b5_outage",
    "b6_import",
    "b7_affinity",
    "b8_limits",
)
