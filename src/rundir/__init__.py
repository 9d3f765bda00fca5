"""The run directory and the sweep directory: the one place that defines and reads/writes their files.

    metrics.py   metrics.jsonl: the row, its writer and the fast reader (detect, report, tests)
    files.py     summary.json and other JSON files, atomic writes, the git state and package versions
    manifest.py  manifest.json of a sweep dir, its lock, which sweep is the latest, whether a job's process lives

Layout (DESIGN contract): <sweep dir>/manifest.json, <sweep dir>/<job>/{.hydra/, metrics.jsonl, summary.json,
attempts/<n>/ (earlier attempts of a resumed job)}.
"""
