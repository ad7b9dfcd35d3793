"""rnncore against PyTorch 2.13 (and onnxruntime) in one run: the comparison lives in the package
(rnncore.benchmark) so that `rnncore bench` runs it from any install; this script is the same
thing from a source checkout: `python bench/compare.py --help`."""
import sys

from rnncore.apps.bench import main

if __name__ == "__main__":
    sys.exit(main())
