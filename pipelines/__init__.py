"""The spine: typed config, run store, data sources, the stage graph and the command line.

It imports no stage: stages run as `python -m <stage> <job.json>` and meet through files on disk.
"""
