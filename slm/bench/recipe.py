"""bench.py's section on the GPT's recipe: the plain GPT-2 recipe (config/recipe_gpt2.py in float32, eager) against
train.py's default path (its recipe, with the dtype and compile train.py picks here) on the same model shape, side
by side: what a step of the default costs against the plainest one. What the recipe buys per minute of training
is ablate.py's to measure (docs/models.md, The GPT's recipe). With --recipe_config (by default the five-minute AKJV
model's, config/train_akjv_5min.py), a third path: that config's recipe options over train.py's defaults, on the
same shape, dtype and compile as the default's: what its extra options cost a step.

MFU counts the model's FLOPs (perf.py) at each recipe's own count (SwiGLU's 3 matrices, an untied head): an
optimizer's work is not model FLOPs, so Muon's orthogonalization shows as a lower MFU, as AdamW's step does.
"""
import functools
import os
import statistics

import torch

from slm import optim, perf, runtime, training
from slm.bench.harness import Job, Trainer, dtype_name, section
from slm.bench.train import default_dtype, defaults_model, model_label


RECIPES = ('gpt2', 'default', 'config')


def config_file(path):
    """Where --recipe_config's file is: as given (from the working directory), else under the repository (so that
    config/... finds the project's configs from anywhere); None where neither is a file."""
    for candidate in (path, os.path.join(training.ROOT, path)):
        if os.path.isfile(candidate):
            return candidate
    return None


def recipe(name, config=''):
    """The train.py options of a recipe: config/recipe_gpt2.py's, train.py's defaults, or (config) those
    defaults with the recipe options the config file sets."""
    if name == 'gpt2':
        return training.recipe(training.GPT2_RECIPE)
    options = {key: getattr(training.TrainConfig, key) for key in training.RECIPE}
    if name == 'config':
        options = training.recipe(config_file(config), base=options)
    return {**options, 'optimizer': optim.resolve_optimizer(options['optimizer'], 'gpt')}


def changes(options, base):
    """What a recipe sets otherwise than base, in a few words ('' where nothing)."""
    return ', '.join(f"{k}={v}" for k, v in options.items() if v != base[k])


def describe(options):
    """A recipe in a few words: what it changes from GPT-2's."""
    return changes(options, recipe('gpt2')) or "GPT-2's"


def conclude_recipe(rows, ctx):
    lines = []
    for r in rows:
        lines.append(f"{r['device']} {r['model']}: train.py's default path (the recipe {r['default_recipe']};"
                     f" {r['dtype']}, {'compiled' if r['compiled'] else 'eager'}) takes {r['step_ratio']:.2f}x the"
                     f" plain GPT-2 recipe's time per step (float32, eager; {r['default_tokens_per_s']:,.0f} against"
                     f" {r['gpt2_tokens_per_s']:,.0f} tokens/s: {1 / r['step_ratio']:.2f}x its speed, MFU"
                     f" {r['default_mfu']:.1%} against {r['gpt2_mfu']:.1%}), with {r['default_params']:,} parameters"
                     f" against {r['gpt2_params']:,}")
        if r['config'] is not None:
            lines.append(f"{r['device']} {r['model']}: {r['config']}'s recipe (the default's with"
                         f" {r['config_recipe'] or 'nothing else'}) takes {r['config_ratio']:.2f}x the default's time"
                         f" per step ({r['config_tokens_per_s']:,.0f} tokens/s, MFU {r['config_mfu']:.1%}), with"
                         f" {r['config_params']:,} parameters")
    return [], lines


@section('recipe', "the plain GPT-2 recipe (config/recipe_gpt2.py, float32, eager) against train.py's default path"
         " (its recipe, dtype and compile), alternating steps, median of --repeats",
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('dtype', 'default dtype', '{}'),
          ('gpt2_params', 'GPT-2 params', '{:,}'), ('gpt2_ms', 'ms/iter', '{:.1f}'),
          ('gpt2_tokens_per_s', 'tokens/s', '{:,.0f}'), ('gpt2_mfu', 'MFU', '{:.1%}'),
          ('default_params', 'default params', '{:,}'), ('default_ms', 'ms/iter', '{:.1f}'),
          ('default_tokens_per_s', 'tokens/s', '{:,.0f}'), ('default_mfu', 'MFU', '{:.1%}'),
          ('step_ratio', 'time ratio', '{:.2f}x'), ('config_params', 'config params', '{:,}'),
          ('config_ms', 'ms/iter', '{:.1f}'), ('config_tokens_per_s', 'tokens/s', '{:,.0f}'),
          ('config_mfu', 'MFU', '{:.1%}'), ('config_ratio', 'vs default', '{:.2f}x')],
         conclude=conclude_recipe)
def plan_recipe(ctx):
    cfg = ctx.cfg

    def job(device):
        model_type, shape, batch_size = defaults_model(cfg.recipe_model)
        recipes = {name: recipe(name, cfg.recipe_config) for name in RECIPES if name != 'config' or cfg.recipe_config}
        paths = {'gpt2': (torch.float32, False),
                 'default': (default_dtype(ctx, model_type, device, shape, batch_size, recipes['default']),
                             runtime.resolve_compile('auto', device) and True in ctx.compile_modes)}
        paths['config'] = paths['default']  # the default path, so that only the recipe differs
        trainers = {name: Trainer(ctx, model_type, device, paths[name][0], batch_size, paths[name][1], shape=shape,
                                  recipe=options) for name, options in recipes.items()}
        times = {name: [] for name in trainers}
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
               'compiled': compiled, 'threads': torch.get_num_threads(), 'config': cfg.recipe_config or None,
               **{f'config_{key}': None for key in ('params', 'ms', 'tokens_per_s', 'mfu', 'ratio', 'recipe')}}
        for name, trainer in trainers.items():
            rates = trainer.throughput(statistics.median(times[name]))
            row.update({f'{name}_params': sum(p.numel() for p in trainer.raw_model.parameters()),
                        f'{name}_ms': rates['ms_per_iter'], f'{name}_tokens_per_s': rates['tokens_per_s'],
                        f'{name}_mfu': rates['mfu'], f'{name}_flops_per_token': rates['flops_per_token']})
        row['step_ratio'] = row['default_ms'] / row['gpt2_ms']
        row['default_recipe'] = describe(recipes['default'])
        if 'config' in recipes:
            row['config_ratio'] = row['config_ms'] / row['default_ms']
            row['config_recipe'] = changes(recipes['config'], recipes['default'])
        return row

    if 'gpt' not in ctx.models:
        return []
    return [Job(f'recipe {cfg.recipe_model} {device}', device, ctx.training_dtype(device),
                functools.partial(job, device)) for device in ctx.devices]
