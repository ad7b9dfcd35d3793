"""The `rnncore` command (also `python -m rnncore`).

    rnncore                         the main job: rnncore train lm with its defaults
    rnncore train lm [flags]        character (or --level word) language model, truncated BPTT
    rnncore train echo [flags]      a many-to-many tagger on a generated memory task
    rnncore train translate         date-format translation: attention, seq2seq, beam search
    rnncore train sentiment         many-to-one classifier: word order decides the label
    rnncore train trigger           many-to-many trigger-word detection on spectrograms
    rnncore train caption           one-to-many captioning with attention over image regions
    rnncore train recognize         text-line recognition with CTC (BiLSTM or pyramid encoder)
    rnncore sample CHECKPOINT       generate text from a language-model checkpoint
    rnncore experiment adding|copy  the lectures' long-range experiments, every cell compared
    rnncore bench [flags]           rnncore against PyTorch (and onnxruntime), side by side

Every command module has add_arguments(parser) and run(args, error) -> exit code, where
error(message) is the parser's error (a clear message and exit code 2 for a bad flag).

Every error, of a flag or of a run (an unusable file, a checkpoint that does not fit), is one
line on stderr and exit status 2, with no traceback; `--debug` (anywhere in the command line)
shows the traceback instead. Ctrl-C outside a training loop's own handling: one line, status 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

# command -> {name: (module, help)}; a command with a single entry under None has no sub-choice.
COMMANDS = {
    "train": {
        "lm": ("rnncore.apps.lm", "character or word language model (the main job)"),
        "echo": ("rnncore.apps.echo", "many-to-many tagger: echo each symbol `--delay` steps later"),
        "translate": ("rnncore.apps.translate", "date-format translation: attention, seq2seq, beam search"),
        "sentiment": ("rnncore.apps.sentiment", "many-to-one classifier: word order decides the label"),
        "trigger": ("rnncore.apps.trigger", "many-to-many trigger-word detection on spectrograms"),
        "caption": ("rnncore.apps.caption", "one-to-many captioning with attention over regions"),
        "recognize": ("rnncore.apps.recognize", "text-line recognition with CTC: BiLSTM or pyramid encoder"),
    },
    "experiment": {
        "adding": ("rnncore.apps.experiments", "the adding problem: every cell on the same budget"),
        "copy": ("rnncore.apps.experiments", "the copy-memory task: every cell on the same budget"),
    },
    "sample": {None: ("rnncore.apps.lm", "generate text from a language-model checkpoint")},
    "bench": {None: ("rnncore.apps.bench", "rnncore against PyTorch 2.13 in one run")},
}

_HELP = {"train": "train a model", "experiment": "run an experiment of the lectures",
         "sample": "generate text from a language-model checkpoint",
         "bench": "rnncore against PyTorch (and onnxruntime), side by side"}


def _entry(module_name, name, what):
    """The (add_arguments, run) of one command: a module's own pair, or for a module serving
    several (rnncore.apps.experiments) its REGISTRY[name]; sample uses the lm module's sample_*."""
    module = importlib.import_module(module_name)
    if what == "sample":
        return module.add_sample_arguments, module.run_sample
    registry = getattr(module, "REGISTRY", None)
    if registry is not None and name is not None:
        return registry[name]
    return module.add_arguments, module.run


class _Parser(argparse.ArgumentParser):
    """argparse with errors of one line: "rnncore train lm: error: ..." (no usage block;
    --help shows it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def one_line(message):
    """A message on one line: its lines joined with "; "."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def build_parser(argv=()):
    """The parser; only the command named by argv[:2] gets its arguments (and its module
    imported), so `rnncore --help` and every command stay quick to start."""
    argv = list(argv)
    parser = _Parser(
        prog="rnncore", description="Recurrent networks with a fast C++ core: train, sample, "
        "experiment, benchmark. With no command: `rnncore train lm` (the main job).")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (anywhere in the command line)")
    commands = parser.add_subparsers(dest="command", metavar="command")
    for command, entries in COMMANDS.items():
        if None in entries:
            module_name, help_text = entries[None]
            sub = commands.add_parser(command, help=_HELP[command], description=help_text)
            if argv[:1] == [command]:
                add, run = _entry(module_name, None, command)
                add(sub)
                sub.set_defaults(run=run, parser=sub)
            continue
        group = commands.add_parser(command, help=_HELP[command], description=_HELP[command])
        choices = group.add_subparsers(dest="choice", metavar="name", required=True)
        for name, (module_name, help_text) in entries.items():
            sub = choices.add_parser(name, help=help_text, description=help_text)
            if argv[:2] == [command, name]:
                add, run = _entry(module_name, name, command)
                add(sub)
                sub.set_defaults(run=run, parser=sub)
    return parser


def main(argv=None):
    """Runs the command in argv (sys.argv[1:] by default); returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["train", "lm"] + argv  # the main job
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return args.run(args, args.parser.error)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{args.parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every error of a run: one line, exit status 2
        if debug:
            traceback.print_exc()
        args.parser.error(_describe(e))


def _describe(e):
    """The one line of an error of a run: its message, with its type where the message alone
    would not say what went wrong."""
    text = one_line(e.args[0] if isinstance(e, KeyError) and e.args else e)
    if isinstance(e, (ValueError, OSError)) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
