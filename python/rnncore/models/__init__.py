"""rnncore.models: the lectures' task models (language model, sequence to sequence with
attention, CTC recogniser, captioner, sentiment classifier, trigger-word detector), with no
command-line code. Built from rnncore.nn and rnncore.train."""
