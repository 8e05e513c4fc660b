"""Training in several processes at once (torchrun): which process this is, its share of each optimizer step,
and the few collectives train.py needs.

    torchrun --standalone --nproc_per_node=4 train.py config/train_akjv.py --gradient_accumulation_steps=8

torchrun starts one process per device and tells each who it is in environment variables (RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); a script started by plain python has none of them and
is the one process of its run. Each process trains a replica of the model on its share of every optimizer
step's batches (batching.py says which share), DistributedDataParallel averages the replicas' gradients, and
every process takes the same optimizer step. What must happen once (the metrics log, the checkpoints) happens
in process 0; what every process must decide alike (skip a step, stop on a signal, an evaluation's loss) is
all-reduced first, so that no process goes its own way and leaves the others waiting in a collective.
"""
import contextlib
import dataclasses
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from configurator import UserError
from slm import batching


@dataclasses.dataclass
class World:
    """This process's place among the processes of its run; World() is a run of one plain process."""
    rank: int = 0                 # this process among all of them: 0 .. size - 1
    local_rank: int = 0           # this process among those on its machine: the GPU it takes
    size: int = 1                 # number of processes (the world size)
    local_size: int = 1           # number of processes on this machine
    is_distributed: bool = False  # started by torchrun: a process group, and the model in DDP
    cpu_group: object = None      # gloo group for host-side flags: agreeing on them never waits for a GPU

    @classmethod
    def from_environment(cls):
        """The World that torchrun's environment variables describe; World() when they are absent."""
        if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
            return cls()
        env = {key: int(os.environ[key]) for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE')
               if key in os.environ}
        return cls(rank=env['RANK'], local_rank=env.get('LOCAL_RANK', 0), size=env['WORLD_SIZE'],
                   local_size=env.get('LOCAL_WORLD_SIZE', env['WORLD_SIZE']), is_distributed=True)

    @property
    def is_main(self):
        """Process 0: the one that logs, plots and writes checkpoints."""
        return self.rank == 0

    def say(self, line):
        """Print a line in process 0 only, so that it appears once however many processes run."""
        if self.is_main:
            tqdm.write(line)

    def device_for(self, name):
        """The device this process trains on, given the configured one: under torchrun, its local rank's GPU."""
        if not self.is_distributed or name == 'cpu':
            return name
        if name != 'cuda':
            raise UserError(f"--device={name} cannot be shared by torchrun's processes: use --device=cuda (each"
                            f" process takes the GPU of its LOCAL_RANK; CUDA_VISIBLE_DEVICES picks them) or cpu")
        if self.local_rank >= torch.cuda.device_count():
            raise UserError(f"process {self.local_rank} of this machine has no GPU of its own"
                            f" ({torch.cuda.device_count()} visible): start at most that many (--nproc_per_node)")
        return f'cuda:{self.local_rank}'

    @contextlib.contextmanager
    def join(self, device):
        """Under torchrun, be a member of the run's process group (NCCL on CUDA, gloo on the CPU) for the duration,
        and leave it however the block ends, an error included. A plain process has nothing to join."""
        if not self.is_distributed:
            yield self
            return
        is_cuda = torch.device(device).type == 'cuda'
        if is_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group('nccl' if is_cuda else 'gloo', device_id=torch.device(device) if is_cuda else None)
        try:
            self.cpu_group = dist.new_group(backend='gloo') if is_cuda else dist.group.WORLD
            yield self
            # all processes done before any tears down: a gloo process whose peer has already closed their
            # connections could abort in destroy_process_group ("terminate called without an active exception")
            dist.barrier(group=self.cpu_group)
        finally:
            dist.destroy_process_group()

    def wrap(self, model):
        """The model as this process trains it: under torchrun, in DistributedDataParallel, which copies process
        0's weights to the others now and averages the gradients in every backward pass that syncs them."""
        if not self.is_distributed:
            return model
        on_cuda = next(model.parameters()).device.type == 'cuda'
        return DistributedDataParallel(model, device_ids=[self.local_rank] if on_cuda else None)

    def sum(self, tensor):
        """tensor summed over the processes (tensor itself in a single process)."""
        if self.is_distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def gather(self, value):
        """[the value of process 0, of process 1, ...] in every process: for small plain values and tensors."""
        if not self.is_distributed:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def gather_rows(self, tensor, dim):
        """The processes' tensors concatenated along dim in rank order: the rows of an LSTM state, made whole."""
        if not self.is_distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    def agreed_signal(self, signum):
        """The signal that any process was sent (0 for none), the same in all of them, so that they stop after the
        same step: torchrun passes a signal on to its processes one by one, and a user may signal just one."""
        return self.agreed_max(signum or 0)

    def agreed_max(self, value):
        """The largest of an int over the processes, the same in all of them (a decision any one may make)."""
        if not self.is_distributed:
            return value
        flag = torch.tensor(value, dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return int(flag)

    def on_main(self, action, *args):
        """Run action(*args) in process 0 only. If it raises a UserError, every process stops (process 0 says
        why, the others exit quietly with the same status) rather than wait for process 0 in a collective."""
        error = None
        if self.is_main:
            try:
                action(*args)
            except UserError as raised:
                error = raised
        if self.is_distributed:
            failed = torch.tensor(int(error is not None))
            dist.broadcast(failed, src=0, group=self.cpu_group)
            if failed and not self.is_main:
                raise SystemExit(2)
        if error:
            raise error

    def launcher(self):
        """How the command that resumes this run starts: python, or torchrun as it was started here."""
        if not self.is_distributed:
            return 'python'
        if self.size == self.local_size:
            return f'torchrun --standalone --nproc_per_node={self.size}'
        return (f'torchrun --nnodes={self.size // self.local_size} --nproc_per_node={self.local_size}'
                f' [with the rendezvous options each node was started with]')


def unwrap(model):
    """The plain module behind a DistributedDataParallel wrapper."""
    return getattr(model, 'module', model)


def micro_steps_per_process(cfg, world_size):
    """How many micro-steps of each optimizer step one of world_size processes runs, so that together they run
    the single process's step on the same batches. The rows of the windowings whose rows continue from batch
    to batch (streams, packed) are shared out (each process runs every micro-step on its rows of the batch),
    because a row's batches must follow each other through one LSTM state; the other windowings' micro-steps
    are. Either way a step trains on batch_size x block_size x gradient_accumulation_steps tokens, however many
    processes share it."""
    if batching.shares_rows(cfg.windowing, cfg.model_type):
        if cfg.batch_size % world_size:
            windowing = batching.resolve_windowing(cfg.windowing, cfg.model_type)
            raise UserError(f"--batch_size={cfg.batch_size} rows of {windowing} batches cannot be shared evenly by"
                            f" {world_size} processes: make it a multiple of {world_size}")
        return cfg.gradient_accumulation_steps
    if cfg.gradient_accumulation_steps % world_size:
        raise UserError(f"--gradient_accumulation_steps={cfg.gradient_accumulation_steps} cannot be shared"
                        f" evenly by {world_size} processes: make it a multiple of {world_size}")
    return cfg.gradient_accumulation_steps // world_size
