"""The denominator of InfoNCE over the other valid rows of each block, without keeping the ``[N, N]``
similarities: the equal-label form of the contrastive kernel (``info_nce.py``) calls it."""

from __future__ import annotations

import torch

from nnunet_cl.precision import at_least_float32, float32_region


class PairwiseLogSumExp(torch.autograd.Function):
    """``[G, N, D]`` rows, ``[G, N]`` validity -> ``[G, N]``: ``log sum_{j != i, valid j} exp(z_i . z_j / tau)``
    per block, i.e. the denominator of InfoNCE over the other valid rows of each block (0 for invalid rows).

    The ``[N, N]`` similarities are never kept: one block (or a few small ones, up to a cache-sized
    chunk) at a time is computed, reduced, and recomputed in the backward pass (one extra matmul). Keeping
    them, autograd's way, costs several fresh 100 MB-scale tensors per ILCP step whose page faults and
    memory traffic cost more on CPU than the matmuls. A large block is first compacted to its valid rows,
    so padding costs nothing; small blocks are batched and their invalid entries masked. Excluded entries
    get the dtype's lowest finite value, not -inf, so a row without candidates stays finite (its
    gradient is then multiplied by 0). Compaction also keeps masked entries out of ``exp``: on CPU an
    exponent that underflows takes a much slower path than an ordinary one.
    """

    BUFFER_ELEMENTS = 1 << 21           # ~8 MB of float32 per chunk: stays in the CPU's cache

    @staticmethod
    def _chunks(valid: torch.Tensor):
        """(block index or slice, valid rows of a single block or None) per chunk."""
        num_blocks, n = valid.shape
        step = max(1, PairwiseLogSumExp.BUFFER_ELEMENTS // max(1, n * n))
        for start in range(0, num_blocks, step):
            stop = min(start + step, num_blocks)
            if stop - start == 1:
                # A single block uses 2D matmuls (BLAS handles the transpose; bmm of one block is slower on CPU).
                yield start, (None if bool(valid[start].all()) else valid[start].nonzero().squeeze(1))
            else:
                yield slice(start, stop), None

    @staticmethod
    def _logits(z, zs, valid):
        """``zs @ z^T`` with self-pairs and invalid candidates excluded."""
        logits = torch.matmul(zs, z.transpose(-1, -2))
        excluded = torch.finfo(logits.dtype).min
        logits.diagonal(dim1=-2, dim2=-1).fill_(excluded)
        if valid is not None and not bool(valid.all()):
            logits.masked_fill_(~valid[..., None, :], excluded)
        return logits

    @staticmethod
    def _operands(blocks, scaled, valid, index, rows):
        z, zs, chunk_valid = blocks[index], scaled[index], valid[index]
        if rows is not None:
            z, zs, chunk_valid = z[rows], zs[rows], None
        return z, zs, chunk_valid

    @staticmethod
    def forward(ctx, blocks, valid, temperature):
        blocks = blocks.contiguous()
        scaled = blocks / temperature
        result = blocks.new_zeros(valid.shape)
        chunks = list(PairwiseLogSumExp._chunks(valid))
        for index, rows in chunks:
            z, zs, chunk_valid = PairwiseLogSumExp._operands(blocks, scaled, valid, index, rows)
            logits = PairwiseLogSumExp._logits(z, zs, chunk_valid)
            lse = torch.logsumexp(logits, dim=-1)
            if rows is None:
                result[index] = lse
            else:
                result[index, rows] = lse
        ctx.save_for_backward(blocks, scaled, valid, result)
        ctx.temperature, ctx.chunks = temperature, chunks    # the backward reuses the compaction
        return result

    @staticmethod
    def backward(ctx, grad_result):
        # float32 also when a caller runs the backward pass under autocast (the engine does not)
        with float32_region(grad_result):
            return PairwiseLogSumExp._backward_float32(ctx, at_least_float32(grad_result))

    @staticmethod
    def _backward_float32(ctx, grad_result):
        blocks, scaled, valid, result = ctx.saved_tensors
        grad_blocks = torch.zeros_like(blocks)
        grad_scaled = grad_result / ctx.temperature
        for index, rows in ctx.chunks:
            z, zs, chunk_valid = PairwiseLogSumExp._operands(blocks, scaled, valid, index, rows)
            lse, grad_lse = result[index], grad_scaled[index]
            if rows is not None:
                lse, grad_lse = lse[rows], grad_lse[rows]
            # softmax_ij = exp(logit_ij - lse_i) = d lse_i / d logit_ij, with logit_ij = z_i . z_j / tau.
            weights = PairwiseLogSumExp._logits(z, zs, chunk_valid)
            weights.sub_(lse.unsqueeze(-1)).exp_().mul_(grad_lse.unsqueeze(-1))
            # d logit_ij = (z_j . dz_i + z_i . dz_j) / tau  ->  grad = (W + W^T) z / tau.
            grad = torch.matmul(weights, z) + torch.matmul(weights.transpose(-1, -2), z)
            if rows is None:
                grad_blocks[index] = grad
            else:
                grad_blocks[index, rows] = grad
        return grad_blocks, None, None
