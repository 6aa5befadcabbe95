"""The read side: commands that read and judge a catalog (validate, stats, plots, report, show).

It sits above `ocrcat.mix` (validate and report describe mixtures), below the CLI:
catalog <- ingest, mix <- inspection <- cli. (Not named `inspect`: run as a
script, `python ocrcat/cli.py` would put this folder first on sys.path and shadow the stdlib module.)
"""
