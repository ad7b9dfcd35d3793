"""A small word-level language model written for torch.nn, as pytorch/examples'
word_language_model: embedding, LSTM/GRU/RNN, linear decoder (tied weights optional),
truncated BPTT with detached hidden states, gradient clipping, SGD or AdamW, checkpoints with
torch.save / torch.load(weights_only=True). One flag picks the recurrent layer's backend:

    python examples/word_language_model.py --backend torch     # torch.nn.LSTM
    python examples/word_language_model.py --backend rnncore   # rnncore.torch.LSTM

The corpus is a text file (--data, default: this repository's README.md) split into words.
tests/test_torch_script.py runs both backends in float64 without dropout and checks that every
printed loss is the same."""
import argparse
import math
import os
import time

import torch

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def recurrent_module(backend):
    if backend == "torch":
        return torch.nn
    import rnncore.torch
    return rnncore.torch


class Corpus:
    def __init__(self, path, valid_fraction=0.1):
        with open(path, encoding="utf-8") as f:
            words = [w for line in f for w in line.split() + ["<eos>"]]
        self.vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
        ids = torch.tensor([self.vocab[w] for w in words], dtype=torch.int64)
        split = int(len(ids) * (1 - valid_fraction))
        self.train, self.valid = ids[:split], ids[split:]


def batchify(data, batch_size):
    n = data.size(0) // batch_size
    return data[:n * batch_size].view(batch_size, -1).t().contiguous()  # (T, B)


class RNNModel(torch.nn.Module):
    def __init__(self, nn, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.0, tie=False):
        super().__init__()
        self.drop = torch.nn.Dropout(dropout)
        self.encoder = torch.nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)  # the one line
        self.decoder = torch.nn.Linear(nhid, ntoken)
        if tie:
            assert nhid == ninp, "tied weights need nhid == emsize"
            self.decoder.weight = self.encoder.weight
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers
        torch.nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        torch.nn.init.zeros_(self.decoder.bias)
        torch.nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        return torch.log_softmax(self.decoder(output), dim=-1), hidden

    def init_hidden(self, batch):
        weight = next(self.parameters())
        h = weight.new_zeros(self.nlayers, batch, self.nhid)
        return (h, h.clone()) if self.rnn_type == "LSTM" else h


def repackage(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage(v) for v in h)


def get_batch(source, i, bptt):
    n = min(bptt, len(source) - 1 - i)
    return source[i:i + n], source[i + 1:i + 1 + n].reshape(-1)


def evaluate(model, data, bptt, batch):
    model.eval()
    total, hidden = 0.0, model.init_hidden(batch)
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            x, y = get_batch(data, i, bptt)
            out, hidden = model(x, hidden)
            total += len(x) * torch.nn.functional.nll_loss(out.view(-1, out.size(-1)), y).item()
    return total / (len(data) - 1)


def run(args):
    """Trains; returns the list of training losses of every batch (and prints some)."""
    torch.manual_seed(args.seed)
    dtype = torch.float64 if args.double else torch.float32
    torch.set_default_dtype(dtype)
    try:
        corpus = Corpus(args.data)
        train = batchify(corpus.train, args.batch_size)
        valid = batchify(corpus.valid, 4)
        model = RNNModel(recurrent_module(args.backend), args.model, len(corpus.vocab),
                         args.emsize, args.nhid, args.nlayers, args.dropout, args.tied)
    finally:
        torch.set_default_dtype(torch.float32)
    opt = (torch.optim.AdamW(model.parameters(), lr=args.lr) if args.optimizer == "adamw"
           else torch.optim.SGD(model.parameters(), lr=args.lr))
    losses = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        hidden = model.init_hidden(args.batch_size)
        start = time.perf_counter()
        for batch, i in enumerate(range(0, train.size(0) - 1, args.bptt)):
            if args.max_batches and batch >= args.max_batches:
                break
            x, y = get_batch(train, i, args.bptt)
            hidden = repackage(hidden)
            model.zero_grad()
            out, hidden = model(x, hidden)
            loss = torch.nn.functional.nll_loss(out.view(-1, out.size(-1)), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            losses.append(loss.item())
            if args.log_interval and batch % args.log_interval == 0:
                ms = (time.perf_counter() - start) * 1000 / (batch + 1)
                print(f"| epoch {epoch} | batch {batch:4d} | ms/batch {ms:7.2f} | "
                      f"loss {loss.item():.6f}")
        val = evaluate(model, valid, args.bptt, 4)
        print(f"| end of epoch {epoch} | valid loss {val:.6f} | valid ppl {math.exp(val):.2f}")
    if args.save:
        torch.save(model, args.save)
        with torch.serialization.safe_globals([RNNModel, type(model.rnn), torch.nn.Dropout,
                                               torch.nn.Embedding, torch.nn.Linear]):
            model = torch.load(args.save, weights_only=True)
        print(f"| reloaded | valid loss {evaluate(model, valid, args.bptt, 4):.6f}")
    return losses


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["torch", "rnncore"], default="torch")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--model", choices=["LSTM", "GRU", "RNN"], default="LSTM")
    p.add_argument("--emsize", type=int, default=64)
    p.add_argument("--nhid", type=int, default=64)
    p.add_argument("--nlayers", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--clip", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bptt", type=int, default=20)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--tied", action="store_true")
    p.add_argument("--double", action="store_true", help="float64 throughout")
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--max-batches", type=int, default=0, help="stop each epoch after this many")
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--save", default="", help="torch.save the model here, then reload it")
    return p


if __name__ == "__main__":
    run(parser().parse_args())
