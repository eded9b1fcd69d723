"""The lottery-ticket runner and the research kit built on it.

- `lottery`: `find_winning_ticket`, `load_round`, `collect_history`.
- `run_config`: `RunConfig`, a run's settings, checked once, and the fingerprint a
  resume compares; `seed_run`: `SeedRun`, one seed's rounds.
- `controls`: the control arms (reinitialized, random masks, pruning at initialization).
- `history`: `LotteryHistory`, summaries across seeds, `plot_history`.
- `paths` and `artifacts`: a run's on-disk layout and what it keeps of a model.
- `instability`: linear interpolation and instability analysis (Frankle et al. 2020).
- `sensitivity`: per-layer sensitivity (Han et al. 2015, Figure 5).
- `evaluation`: a model's metric on data.

The public names are `tf_lottery.find_winning_ticket`, ...; this file imports nothing.
"""
