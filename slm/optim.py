"""Optimization: AdamW with weight decay on the matrices (or Muon for the GPT's hidden matrices and AdamW for the
rest), the learning-rate schedule, and one optimizer step (train_step: gradient accumulation, the gradient
average of several processes, clipping, non-finite steps)."""
import math

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from slm import runtime
from slm.distributed import unwrap


LR_SCHEDULES = ('cosine', 'warmdown')


def learning_rate(it, cfg):
    """Linear warmup to learning_rate; then down to min_lr at lr_decay_iters, by a cosine, or (warmdown, as
    nanochat and the speedrun) flat until the last warmdown_frac of the steps and linear over those; then flat."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    if it >= decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == 'warmdown':
        start = max(cfg.warmup_iters, decay_iters * (1 - cfg.warmdown_frac))
        if it < start:
            return cfg.learning_rate
        return cfg.learning_rate - (it - start) / max(1, decay_iters - start) * (cfg.learning_rate - cfg.min_lr)
    progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


OPTIMIZERS = ('adamw', 'muon')


def resolve_optimizer(name, model_type):
    """--optimizer as the optimizer it names: auto is Muon (with AdamW for the rest) for a GPT, AdamW for an
    LSTM, whose weights are not the GPT's hidden matrices."""
    if name != 'auto':
        return name
    return 'muon' if model_type == 'gpt' else 'adamw'


def set_learning_rate(optimizer, lr):
    """Set every parameter group's learning rate to lr times the group's lr_scale (1 unless make_optimizer set
    one): each optimizer of several follows the one schedule at its own peak."""
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_scale', 1.0)


def hidden_matrices(model):
    """The GPT's 2-D weights inside its blocks (attention and MLP matrices): what Muon updates. The embeddings
    are lookups (one row per token, updated only where the token occurs) and the head maps to the vocabulary:
    Muon's orthogonalized step suits neither (Jordan et al. 2024), so they stay on AdamW with the 1-D gains."""
    return [p for p in model.blocks.parameters() if p.dim() == 2 and p.requires_grad]


def make_optimizer(model, cfg, device):
    """AdamW with weight decay on matrices (2-D and up) only, with the kernels --adamw picks. With
    --optimizer=muon: torch.optim.Muon for hidden_matrices (peak --muon_lr) and that AdamW for the rest, stepped
    as one (Optimizers)."""
    params = [p for p in model.parameters() if p.requires_grad]
    is_muon = resolve_optimizer(cfg.optimizer, cfg.model_type) == 'muon'
    if is_muon:
        # Muon: momentum, then the update orthogonalized by a few Newton-Schulz steps, so that every direction of
        # a matrix moves at the same rate instead of the few that dominate the gradient
        hidden = hidden_matrices(model)
        muon = torch.optim.Muon([{'params': hidden, 'lr_scale': cfg.muon_lr / cfg.learning_rate}], lr=cfg.muon_lr,
                                weight_decay=cfg.muon_weight_decay)
        params = [p for p in params if all(p is not h for h in hidden)]
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': cfg.weight_decay},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    adamw = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                              **runtime.adamw_options(cfg.adamw, device))
    return Optimizers(muon=muon, adamw=adamw) if is_muon else adamw


class Optimizers:
    """Several torch optimizers, each over its own parameters, stepped as one: what train.py, GradScaler and a
    checkpoint ask of an optimizer (param_groups, step, zero_grad, state_dict, load_state_dict)."""

    def __init__(self, **optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def step(self):
        for optimizer in self.optimizers.values():
            optimizer.step()

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state):
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


def train_step(batch_loss, optimizer, scaler, cfg, micro_steps=None):
    """One optimizer step: forward and backward over gradient_accumulation_steps batches, clip, update (unless
    the step is not finite and cfg.on_nonfinite is skip). bench.py times this.

    micro_steps: how many of those batches this process runs when several share the step (see
    micro_steps_per_process); their gradients are averaged over the processes in the last one's backward pass.
    Returns (the step's loss as a device tensor, NaN when its loss or gradients were not finite, whether the
    step was skipped). Reading the loss waits for the device; see StepLosses for why the loop waits rarely.
    """
    micro_steps = micro_steps or cfg.gradient_accumulation_steps
    ddp = batch_loss.model if isinstance(batch_loss.model, DistributedDataParallel) else None
    params = [p for p in unwrap(batch_loss.model).parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=params[0].device)

    def backward(loss):  # each micro-batch's loss as soon as it is computed; weight: see batching.Batch
        scaler.scale(loss * batch_loss.weight / micro_steps).backward()

    for micro_step in range(micro_steps):
        # the gradients are averaged over the processes in the last micro-step's backward only (BatchLoss.sync)
        batch_loss.sync = micro_step == micro_steps - 1
        loss_sum += batch_loss(backward) * batch_loss.weight / micro_steps
    if ddp:  # the mean of all processes' losses: each must decide alike below, or one would wait for the others
        dist.all_reduce(loss_sum, group=ddp.process_group)
        loss_sum /= ddp.process_group.size()
    scaler.unscale_(optimizer)  # a no-op unless float16; the gradients are the true ones from here on
    is_finite = torch.isfinite(loss_sum)
    if cfg.grad_clip:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    elif not scaler.is_enabled():
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if not scaler.is_enabled():  # float16's overflowing gradients are the scaler's to skip (it lowers its scale)
        is_finite &= torch.isfinite(grad_norm)
    is_skipped = cfg.on_nonfinite == 'skip' and not is_finite.item()  # the skip mode's one host sync per step
    if not is_skipped:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return torch.where(is_finite, loss_sum, torch.nan), is_skipped
