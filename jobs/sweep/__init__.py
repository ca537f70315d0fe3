"""`python -m jobs.sweep`: a Ray Tune sweep of ordinary Wide Valley runs.

The modules, in the order a sweep uses them:
    sweepfile  the sweep file: SweepConfig, the base run config, [sweep.space] (load_sweep)
    space      distributions over config keys; run configs as flat key → value
    resources  what one trial reserves (one placement group), how many run at once
    trial      the Tune trainable (one run per trial) and PBT's checkpoint hand-over
    tuner      the scheduler and the Tuner (new, or restored from the sweep directory)
    results    rows per trial, trials.parquet, best.toml, the table; plot: sweep.png
    command    the command line: parse_args, check_inputs, run, main

Nothing is imported here: a trial's process imports jobs.sweep.trial alone (Ray pickles
the trainable by reference), without the driver's modules.
"""
