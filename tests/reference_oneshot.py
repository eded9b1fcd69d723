"""The reference one-shot pruning code, transcribed as a test oracle (torch, CPU).

Upstream, as stored in the public index at these commits:

- locuslab/wanda (MIT License), https://github.com/locuslab/wanda
  - `lib/layerwrapper.py`, commit 42e856e4eb5729f194afe290387cffa248850fd1:
    `WrappedGPT.add_batch` (the running mean of squared feature norms).
  - `lib/prune.py`, commit 069ac970cd76ed8e6b94ad3d35a917ecf7039ac9:
    `prune_wanda` (the score |W| · sqrt(scaler_row), the stable per-output sort
    that prunes `int(columns · sparsity)` weights, the N:M branch) and its loop
    over blocks (capture the block's inputs with forward hooks, prune, run the
    pruned block again for the next block's inputs).
- IST-DASLab/sparsegpt (Apache License 2.0), https://github.com/IST-DASLab/sparsegpt
  - `sparsegpt.py`, commit 5e3e2d1951b2127f30e08afb89adfc8d0c9c7129:
    `SparseGPT.add_batch` and `SparseGPT.fasterprune`.

Only the `torch.nn.Linear` case is transcribed, step for step, without the
quantizer, prints, CUDA calls and device maps. Two changes: the dtype is an
argument (the reference works in float32) so that the comparison can run in
float64, and `fasterprune` returns the mask it chose (each block's `mask1`),
which the reference keeps local. Nothing here is imported from the upstream
repositories.
"""

import math

import torch


class WrappedGPT:
    """Wanda's per-layer statistics: scaler_row, the mean squared norm of each input."""

    def __init__(self, layer, dtype=torch.float32):
        self.layer = layer
        self.columns = layer.weight.shape[1]
        self.scaler_row = torch.zeros(self.columns, dtype=dtype)
        self.nsamples = 0
        self.dtype = dtype

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        count = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + count)
        self.nsamples += count
        inp = inp.type(self.dtype)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def wanda_mask(weight, scaler_row, sparsity, prune_n=0, prune_m=0):
    """`prune_wanda`'s mask for one layer: True where pruned."""
    metric = torch.abs(weight) * torch.sqrt(scaler_row.reshape((1, -1)))
    mask = torch.zeros_like(metric) == 1
    if prune_n != 0:
        for ii in range(metric.shape[1]):
            if ii % prune_m == 0:
                tmp = metric[:, ii : (ii + prune_m)].float()
                mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    else:
        sort_res = torch.sort(metric, dim=-1, stable=True)
        indices = sort_res[1][:, : int(metric.shape[1] * sparsity)]
        mask.scatter_(1, indices, True)
    return mask


class SparseGPT:
    """SparseGPT's per-layer state: the Hessian, and the pruning with weight update."""

    def __init__(self, layer, dtype=torch.float32):
        self.layer = layer
        self.rows, self.columns = layer.weight.shape
        self.H = torch.zeros((self.columns, self.columns), dtype=dtype)
        self.nsamples = 0
        self.dtype = dtype

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        count = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + count)
        self.nsamples += count
        inp = math.sqrt(2 / self.nsamples) * inp.to(self.dtype)
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01):
        """Prunes and updates `layer.weight` in place; returns the mask (True: pruned)."""
        W = self.layer.weight.data.clone().to(self.dtype)
        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        chosen = torch.zeros_like(W) == 1
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            if prunen == 0:
                tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if prunen != 0 and i % prunem == 0:
                    tmp = (
                        W1[:, i : (i + prunem)] ** 2
                        / (torch.diag(Hinv1)[i : (i + prunem)].reshape((1, -1))) ** 2
                    )
                    mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)

                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
            chosen[:, i1:i2] = mask1

        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
        return chosen


@torch.no_grad()
def prune_blocks(blocks, inps, method, sparsity, prune_n=0, prune_m=0, dtype=torch.float32):
    """The loop of `prune_wanda` / `prune_sparsegpt` over `blocks`, one sample at a time.

    Args:
        blocks: `torch.nn.Module`s applied in order; their `nn.Linear`s are pruned.
        inps: Tensor (samples, ...) of the first block's inputs.
        method: `"wanda"` or `"sparsegpt"`.

    Returns:
        A list of masks (True: pruned), one per Linear, in order.
    """
    masks = []
    for block in blocks:
        subset = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        wrapped = [
            (WrappedGPT if method == "wanda" else SparseGPT)(layer, dtype) for layer in subset
        ]
        handles = [
            layer.register_forward_hook(lambda _, inp, out, w=w: w.add_batch(inp[0].data))
            for layer, w in zip(subset, wrapped)
        ]
        for j in range(len(inps)):
            block(inps[j].unsqueeze(0))
        for handle in handles:
            handle.remove()
        for layer, w in zip(subset, wrapped):
            if method == "wanda":
                mask = wanda_mask(layer.weight.data, w.scaler_row, sparsity, prune_n, prune_m)
                layer.weight.data[mask] = 0
            else:
                mask = w.fasterprune(sparsity, prune_n, prune_m, percdamp=0.01, blocksize=128)
            masks.append(mask)
        inps = torch.stack([block(inps[j].unsqueeze(0))[0] for j in range(len(inps))])
    return masks
