"""The run folder and the sweep directory: their files, written, read and checked here only.

Below training (the trainer writes ``history.jsonl`` and ``checkpoint.pt``
through it) and above config, models and data, whose objects it stores.
"""

from imer.runfolder.folder import FILES, RunFolder, finished_runs

__all__ = ["FILES", "RunFolder", "finished_runs"]
