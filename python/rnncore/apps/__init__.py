"""rnncore.apps: the programs behind the `rnncore` command (training tasks, experiments,
benchmarks). They import the library (nn, train, models, decode), never the package face; the
library never imports them."""
