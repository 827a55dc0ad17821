"""Spreading generator training over processes: DDP (replicas) or FSDP (shards), with options.

``Parallelism`` is a launch setting, not part of the run: the checkpoint does not record it, so a
run started with plain DDP on 4 processes can continue with FSDP on 2, or in one process.

FSDP here is PyTorch's ``fully_shard`` (FSDP2): every transformer :class:`~arvision.nn.transformer.Block`
is its own unit (its parameters are all-gathered just before its forward and freed after, so
only one block is whole at a time) and the root takes the rest (embeddings, head). Parameters,
gradients and AdamW's moments are sharded on dim 0 across the processes; each rank still takes
its share of every global batch, and the reduce-scatter averages gradients as DDP's all-reduce
does, so N processes follow a 1-process run up to float summation order.

Checkpoints are world-size independent: :func:`full_state` gathers the whole model and the
optimizer state (in ``Optimizer.state_dict()``'s own index-keyed form, with whole tensors) on
rank 0, so ``checkpoint.pt`` has the same layout whether it came from 1 process, DDP or FSDP on N,
and :func:`load_optimizer` re-shards it for whatever world size resumes. (Gathering on rank 0
bounds the model by one host's CPU memory; beyond that a sharded ``torch.distributed.checkpoint``
would be the next step.)

Options: ``mixed_precision="bf16"`` is FSDP's ``MixedPrecisionPolicy``: blocks compute in bf16
from bf16 copies of fp32 master weights; gradients are reduced and AdamW steps in fp32.
``activation_checkpointing`` recomputes each block's activations in the backward pass instead of
storing them (non-reentrant ``torch.utils.checkpoint``): less memory, about one more forward of
compute, bitwise the same gradients.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from arvision.distributed import DistInfo, one_process_group

MIXED_PRECISION = ("none", "bf16")


@dataclass(frozen=True, kw_only=True)
class Parallelism:
    """How one launch of a training run uses its processes (see the module docstring).

    Args:
        fsdp: shard parameters, gradients and optimizer state across the processes (FSDP2)
            instead of replicating them (DDP). With a single process it runs FSDP over a
            one-process group: nothing is sharded, but precision and numerics are those of an
            N-process FSDP run, which is a cheap way to try a setting before a large launch.
        mixed_precision: "none" (fp32) or "bf16" (needs ``fsdp``).
        activation_checkpointing: recompute each block's activations in the backward pass.
    """

    fsdp: bool = False
    mixed_precision: str = "none"
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION)}")
        if self.mixed_precision != "none" and not self.fsdp:
            raise ValueError(f"--mixed-precision {self.mixed_precision} is FSDP's mixed-precision policy (bf16 compute, fp32 "
                             "weights, gradients and optimizer); add --fsdp")  # fmt: skip

    def check_device(self, device: str) -> None:
        """A clear error before any work for devices FSDP does not run on here."""
        kind = torch.device(device).type
        if self.fsdp and kind not in ("cpu", "cuda"):
            raise ValueError(f"--fsdp runs on cpu (gloo) or cuda (nccl) devices, not {device!r}; "
                             "drop --fsdp or pick one of those")


def checkpoint_blocks(model: nn.Module) -> int:
    """Make every transformer block of ``model`` recompute its activations in the backward pass;
    returns how many blocks. Done by replacing the instance's ``forward`` (not by wrapping the
    module), so parameter names, state dicts and checkpoints are unchanged; FSDP's hooks still run
    around the whole call, so a block's weights are gathered once for its forward and once for its
    recomputation + backward."""
    from arvision.nn.transformer import Block

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)
    return len(blocks)


def _checkpointed(forward, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():  # nothing to save memory for (evaluation)
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def parallelize(model: nn.Module, ema: nn.Module | None, info: DistInfo, device: str,
                options: Parallelism) -> tuple[Callable[..., Any], DistInfo]:  # fmt: skip
    """Apply ``options`` to ``model`` (already on ``device``, weights loaded); returns what to call
    for the forward pass (the DDP wrapper, or ``model`` itself, which FSDP shards in place) and the
    process info (FSDP in a single process makes a one-process group, ended by ``shutdown``).

    Under FSDP the EMA copy is sharded the same way (one root unit; it never runs a forward), so
    its update is a local ``lerp_`` between matching shards. Build the optimizer afterwards: FSDP
    replaces the parameters by sharded ones."""
    if options.activation_checkpointing:
        checkpoint_blocks(model)
    if options.fsdp:
        info = one_process_group(info, device)
        shard(model, ema, device, mixed_precision=options.mixed_precision)
        return _quiet(model), info
    return (nn.parallel.DistributedDataParallel(model) if info.enabled else model), info


def _autocast(forward, device_type: str, *args: Any, **kwargs: Any) -> Any:
    with torch.autocast(device_type, dtype=torch.bfloat16):
        return forward(*args, **kwargs)


def _quiet(model: nn.Module) -> Callable[..., Any]:
    """``model`` called without FSDP's warning that the root returned a view (the logits): it
    guards against in-place writes into the output, which no training loss here does."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
            return model(*args, **kwargs)

    return call


def shard(model: nn.Module, ema: nn.Module | None, device: str, *, mixed_precision: str = "none") -> None:
    """``fully_shard`` every transformer block of ``model``, then its root (the process group must exist)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from arvision.nn.transformer import Block

    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    bf16 = mixed_precision == "bf16"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    if bf16:  # the model casts to fp32 on purpose in places (inputs, norms); autocast keeps matmuls in bf16
        model.forward = functools.partial(_autocast, model.forward, torch.device(device).type)
    if ema is not None:
        fully_shard(ema, mesh=mesh)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict: gathered onto rank 0's CPU under FSDP (every rank must call; ranks
    other than 0 get ``{}``), ``model.state_dict()`` otherwise."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def _param_names(model: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in ``state_dict()`` order (its index keys)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in opt.param_groups for p in group["params"]]


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``opt.state_dict()`` with whole tensors, the same layout for any world size (FSDP: gathered
    on rank 0, the other ranks get ``{}``; every rank must call)."""
    if not is_sharded(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, opt, options=_options())
    if not by_name:
        return {}
    names = _param_names(model, opt)
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    return {"state": {index[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_optimizer(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an :func:`optimizer_state` (from any world size) into ``opt``; under FSDP each rank
    keeps its own shard of the whole tensors (every rank must call, with the same ``state``)."""
    if not is_sharded(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model, opt)
    if len(names) != sum(len(g["params"]) for g in state["param_groups"]):
        raise ValueError("the checkpoint's optimizer state does not fit this model; was it saved by another model?")
    by_name = {
        "state": {names[int(i)]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, opt, by_name, options=StateDictOptions(full_state_dict=True))


def unsharded(model: nn.Module) -> nn.Module | None:
    """A plain (unsharded) copy of ``model`` for saving: the model itself when not sharded; under
    FSDP a fresh instance of its class with the gathered weights on rank 0, None on the others."""
    if not is_sharded(model):
        return model
    state = model_state(model)
    if dist.get_rank() != 0:
        return None
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__[1:] if not issubclass(c, FSDPModule))  # fully_shard subclasses it
    plain = cls(model.config)
    plain.load_state_dict(state)
    return plain
