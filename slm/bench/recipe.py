"""bench.py's section on the GPT's recipe: the plain GPT-2 recipe (config/recipe_gpt2.py in float32, eager) against
train.py's default path (its recipe, with the dtype and compile train.py picks here) on the same model shape, side
by side: what a step of the default costs against the plainest one. What the recipe buys per minute of training
is ablate.py's to measure (docs/models.md, The GPT's recipe).

MFU counts the model's FLOPs (perf.py) at each recipe's own count (SwiGLU's 3 matrices, an untied head): an
optimizer's work is not model FLOPs, so Muon's orthogonalization shows as a lower MFU, as AdamW's step does.
"""
import functools
import statistics

import torch

from slm import optim, perf, runtime, training
from slm.bench.harness import Job, Trainer, dtype_name, section
from slm.bench.train import default_dtype, defaults_model, model_label


RECIPES = ('gpt2', 'default')


def recipe(name):
    """The train.py options of a recipe: config/recipe_gpt2.py's, or train.py's defaults."""
    if name == 'gpt2':
        return training.recipe(training.GPT2_RECIPE)
    options = {key: getattr(training.TrainConfig, key) for key in training.RECIPE}
    return {**options, 'optimizer': optim.resolve_optimizer(options['optimizer'], 'gpt')}


def describe(options):
    """A recipe in a few words: what it changes from GPT-2's."""
    gpt2 = recipe('gpt2')
    changed = [f"{k}={v}" for k, v in options.items() if v != gpt2[k]]
    return ', '.join(changed) or "GPT-2's"


def conclude_recipe(rows, ctx):
    return [], [f"{r['device']} {r['model']}: train.py's default path (the recipe {r['default_recipe']}; {r['dtype']},"
                f" {'compiled' if r['compiled'] else 'eager'}) takes {r['step_ratio']:.2f}x the plain GPT-2 recipe's"
                f" time per step (float32, eager; {r['default_tokens_per_s']:,.0f} against"
                f" {r['gpt2_tokens_per_s']:,.0f} tokens/s: {1 / r['step_ratio']:.2f}x its speed, MFU"
                f" {r['default_mfu']:.1%} against {r['gpt2_mfu']:.1%}), with {r['default_params']:,} parameters"
                f" against {r['gpt2_params']:,}" for r in rows]


@section('recipe', "the plain GPT-2 recipe (config/recipe_gpt2.py, float32, eager) against train.py's default path"
         " (its recipe, dtype and compile), alternating steps, median of --repeats",
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('dtype', 'default dtype', '{}'),
          ('gpt2_params', 'GPT-2 params', '{:,}'), ('gpt2_ms', 'ms/iter', '{:.1f}'),
          ('gpt2_tokens_per_s', 'tokens/s', '{:,.0f}'), ('gpt2_mfu', 'MFU', '{:.1%}'),
          ('default_params', 'default params', '{:,}'), ('default_ms', 'ms/iter', '{:.1f}'),
          ('default_tokens_per_s', 'tokens/s', '{:,.0f}'), ('default_mfu', 'MFU', '{:.1%}'),
          ('step_ratio', 'time ratio', '{:.2f}x')],
         conclude=conclude_recipe)
def plan_recipe(ctx):
    cfg = ctx.cfg

    def job(device):
        model_type, shape, batch_size = defaults_model(cfg.recipe_model)
        paths = {'gpt2': (torch.float32, False),
                 'default': (default_dtype(ctx, model_type, device, shape, batch_size, recipe('default')),
                             runtime.resolve_compile('auto', device) and True in ctx.compile_modes)}
        trainers = {name: Trainer(ctx, model_type, device, paths[name][0], batch_size, paths[name][1], shape=shape,
                                  recipe=recipe(name)) for name in RECIPES}
        times = {name: [] for name in RECIPES}
        try:
            for trainer in trainers.values():
                trainer.warm_up(cfg.warmup)
            for _ in range(cfg.repeats):  # alternating, so that other work on the machine slows both alike
                for name, trainer in trainers.items():
                    times[name].append(perf.median_seconds(trainer.step, device, 1))
        finally:
            for trainer in trainers.values():
                trainer.close()
        dtype, compiled = paths['default']
        row = {'model': model_label(cfg.recipe_model), 'device': device, 'dtype': dtype_name(dtype),
               'compiled': compiled, 'threads': torch.get_num_threads()}
        for name, trainer in trainers.items():
            rates = trainer.throughput(statistics.median(times[name]))
            row.update({f'{name}_params': sum(p.numel() for p in trainer.raw_model.parameters()),
                        f'{name}_ms': rates['ms_per_iter'], f'{name}_tokens_per_s': rates['tokens_per_s'],
                        f'{name}_mfu': rates['mfu'], f'{name}_flops_per_token': rates['flops_per_token']})
        row['step_ratio'] = row['default_ms'] / row['gpt2_ms']
        row['default_recipe'] = describe(recipe('default'))
        return row

    if 'gpt' not in ctx.models:
        return []
    return [Job(f'recipe {cfg.recipe_model} {device}', device, ctx.training_dtype(device),
                functools.partial(job, device)) for device in ctx.devices]
