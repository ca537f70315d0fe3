"""`python -m jobs.compare --config jobs/configs/compare_mnist1d.toml`: the reproduction table.

For every model and seed: SGD (the sgd config's y independent replicas, mean single
replica), SGD with y× the steps (one replica), the output ensemble of the y SGD runs,
the rSGD center, Entropy-SGD (y independent replicas, mean single replica, L inner
steps counted as gradient evaluations), the Parle center and the EASGD center, all at
the same gradient evaluations per replica. Hyperparameters are chosen first by a small
sweep on a validation split carved from the training set (one seed), never on test.

Each (model, method, seed, hyperparameter) run is one Ray task with num_cpus = 1 that
steps a Coordinator with LocalGroup in-process and then measures flatness from the run
directory's final checkpoint; every task does y × steps gradient evaluations on one CPU,
so all methods get the same compute. The driver builds the table only from what the run
directories hold (summary.json and the compare.json the task writes beside it), and
writes <output>/RESULTS.md, <output>/results/compare.parquet (one row per table entry
and seed, with its run directory), sweep.parquet and plots.

Modules, in the order a comparison uses them:

- methods: the table's rows (which methods, in which order, how each row reads its model);
- protocol: the comparison TOML (Protocol, FlatnessSpec, CompareError);
- plan: the run config of each job (method × seed × phase) at the shared budget;
- task: one run as a Ray task, training then measuring flatness;
- rows: one table entry per run, read back from its run directory only;
- stats: mean ± std over seeds, verdicts, Spearman's ρ;
- tables, report, figures: RESULTS.md's text, the plots and the Parquet files;
- driver: the sweep, the choice of hyperparameters and the final runs;
- command: the command line (parse_args, main).

Nothing is re-exported here, so that importing one module (a Ray worker unpickling
run_job, the table tests) does not import the command line and everything it needs;
callers import the module that holds what they use.
"""
