"""Scripts the benchmarks run in fresh processes, by file path, each printing one JSON line.

They run in the environments being measured (the serving layer under ``python -S``, a venv holding
only the serving packages, MLflow's), so they import only the standard library, what is measured,
and their sibling ``_shared`` (a script's folder leads ``sys.path``); never this project's packages.
"""
