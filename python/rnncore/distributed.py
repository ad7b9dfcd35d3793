"""Data-parallel training of rnncore's numpy models over torch.distributed (one engine for both
layers: models built from rnncore.torch use torch's own DistributedDataParallel).

Every process (rank) holds the whole model and trains on its own share of each batch:

    import torch.distributed as dist, rnncore
    from rnncore.distributed import broadcast_parameters, all_reduce_gradients

    dist.init_process_group("gloo")            # under torchrun: rank, size, address from the env
    model = MyModel(...)                       # an rnncore Module / Model
    broadcast_parameters(model)                # every rank starts from rank 0's weights
    opt = rnncore.optim.Adam(model, lr=1e-3)
    for x, y in my_share_of_each_batch:        # the same number of steps on every rank
        model.zero_grad()
        loss, d = rnncore.losses.cross_entropy(model(x), y)   # mean over the local share
        model.backward(d)
        all_reduce_gradients(model)            # the mean of the ranks' gradients
        opt.step()                             # identical update everywhere

With the loss a mean over equal local shares, the mean of the ranks' gradients is the gradient
of the mean over the whole batch, so the ranks stay equal to one another and to one process
training on the union of the batches. See docs/distributed.md (torchrun on one machine and on
several). Tensors are CPU views of the numpy arrays (torch.from_numpy): no copies besides the
packing of many small arrays into a few buffers per collective call.
"""
from __future__ import annotations

import numpy as np
import torch.distributed as dist

import torch
from rnncore.nn.module import parameters_changed, walk_parameters

__all__ = ["broadcast_parameters", "all_reduce_gradients"]

# Arrays are packed into buffers of at most this size per collective call: few calls (each has a
# latency) without a second copy of a large model in memory.
BUCKET_BYTES = 32 * 2**20


def _require_process_group(what, group):
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"rnncore.distributed.{what} needs an initialised torch.distributed "
                           "process group: call torch.distributed.init_process_group('gloo') "
                           "first (torchrun provides its rank, size and address)")
    return dist.get_world_size(group)


def _buckets(arrays, bucket_bytes):
    """Runs of arrays of one dtype totalling at most bucket_bytes (an array larger than that
    alone), in the given order: every rank forms the same buckets for the same model."""
    bucket, size, dtype = [], 0, None
    for a in arrays:
        if bucket and (a.dtype != dtype or size + a.nbytes > bucket_bytes):
            yield bucket
            bucket, size = [], 0
        bucket.append(a)
        size += a.nbytes
        dtype = a.dtype
    if bucket:
        yield bucket


def _collective(arrays, op, bucket_bytes):
    """op(tensor) in place on every array: directly on a lone C-contiguous array, else on a
    packed buffer that is written back."""
    for bucket in _buckets(arrays, bucket_bytes):
        if len(bucket) == 1 and bucket[0].flags.c_contiguous:
            op(torch.from_numpy(bucket[0]))
            continue
        flat = np.concatenate([a.ravel() for a in bucket])
        op(torch.from_numpy(flat))
        offset = 0
        for a in bucket:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size
    parameters_changed()  # the arrays may be parameters (a broadcast of the model)


def _pairs(what, model):
    models = model if isinstance(model, (list, tuple)) else [model]
    for m in models:
        if isinstance(m, torch.nn.Module):
            raise TypeError(f"rnncore.distributed.{what} takes rnncore's numpy modules; got the "
                            f"torch module {type(m).__name__}: wrap models built from torch "
                            "modules (rnncore.torch layers included) in "
                            "torch.nn.parallel.DistributedDataParallel instead")
    return walk_parameters(model)


def broadcast_parameters(model, src=0, group=None):
    """Copies rank `src`'s parameters into every rank's model, in place (call once, after
    building the model and before the first step; optimiser state starts empty everywhere).

    model: an rnncore Module or Model, or a list of them (as the optimisers take). First checks
    that every rank has the same parameters (names, shapes, dtypes): a mismatch raises ValueError
    on every rank, naming the first difference, instead of hanging or mixing up arrays."""
    world = _require_process_group("broadcast_parameters", group)
    pairs = _pairs("broadcast_parameters", model)
    signature = [(name, tuple(p.shape), p.dtype.str) for name, p, _ in pairs]
    signatures = [None] * world
    dist.all_gather_object(signatures, signature, group=group)
    group_src = dist.get_group_rank(group, src) if group is not None else src
    reference = signatures[group_src]
    for rank, other in enumerate(signatures):
        if other != reference:
            diff = next((f"{a} vs {b}" for a, b in zip(reference, other) if a != b),
                        f"{len(reference)} vs {len(other)} parameters")
            raise ValueError(f"broadcast_parameters: the models differ between ranks {group_src} "
                             f"and {rank} of the group (name, shape, dtype): {diff}")
    _collective([p for _, p, _ in pairs], lambda t: dist.broadcast(t, src, group=group),
                BUCKET_BYTES)


def all_reduce_gradients(model, average=True, group=None, bucket_bytes=BUCKET_BYTES):
    """Replaces every gradient in model.grads by its sum over the ranks (average=True: the mean),
    in place. Call after backward and before the optimiser step (and before clipping, so that
    every rank clips the same gradient). All ranks must call it with the same model."""
    world = _require_process_group("all_reduce_gradients", group)
    grads = [g for _, _, g in _pairs("all_reduce_gradients", model)]
    _collective(grads, lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group),
                bucket_bytes)
    if average and world > 1:
        for g in grads:
            g /= g.dtype.type(world)
