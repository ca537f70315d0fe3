"""What every layer uses: config, data sets, models, storage, plots, tracking (no Ray)."""
