"""The report card on disk: report.md (tables and pictures), report.json (every number), PNG plots, and
samples.html (each token shaded by how surprising the model found it). One card, or two side by side
(evaluate.py --compare), with their differences. The measures are slm/report.py's."""
import html
import json
import os

import numpy as np

from slm import storage


SHADE_BITS = 12  # a token this surprising (or more) is shaded fully


def write(cards, folder):
    """Write cards (one or two report_card dicts) into folder (made if need be); return report.md's path."""
    os.makedirs(folder, exist_ok=True)
    with storage.atomic_write(os.path.join(folder, 'report.json'), 'w') as f:
        json.dump({'models': [without_ids(card) for card in cards]}, f, indent=1)
    pictures = []
    if any('by_position' in card for card in cards):
        pictures.append(('How much context it uses', plot_by_position(cards, folder)))
        pictures.append(('Calibration', plot_calibration(cards, folder)))
    if any('memorization' in card for card in cards):
        pictures.append(('Memorization', plot_memorization(cards, folder)))
    write_samples_page(cards, os.path.join(folder, 'samples.html'))
    path = os.path.join(folder, 'report.md')
    with storage.atomic_write(path, 'w') as f:
        f.write(markdown(cards, pictures))
    return path


def without_ids(card):
    """The card without the samples' token ids (their text is kept)."""
    drawn = {k: v for k, v in card['samples'].items() if k not in ('ids', 'token_texts')}
    return {**card, 'samples': drawn}


def name_of(card):
    return card['model']['out_dir']


# ---------------------------------------------------------------------------------------------------------
# the rows of the table: (label, the value of a card or None, format)
# ---------------------------------------------------------------------------------------------------------

def rows(card):
    """(label, value) of every number the table shows, in order; None where the card lacks it."""
    m, h = card['model'], card.get('held_out')
    unit = m['unit']
    out = [('parameters', m['parameters']), ('trained iterations', m['iterations'])]
    if h:
        for name in ('chunked', 'sliding'):
            s = h[name]
            label = 'chunked' if name == 'chunked' else f"sliding (stride {h['stride']})"
            out += [(f'held-out nats/token, {label}', s['nats_per_token']),
                    (f'held-out bits/{unit}, {label}', s['bits_per_unit']),
                    (f'  95% interval over documents, {name}', '{:.4f} - {:.4f}'.format(*s['bits_per_unit_95']))]
        c = card['calibration']
        out += [('expected calibration error', c['raw']['ece']),
                ('fitted temperature', c['fitted']['temperature']),
                ('  held-out targets it is fitted on', c['sample_targets']),
                ('calibration error at it', c['fitted']['ece']),
                ('nats/token at it', c['fitted']['nats_per_token'])]
    mem = card.get('memorization')
    if mem:
        for n, sample, held in zip(mem['n'], mem['samples'], mem['held_out']):
            out += [(f'{n}-{unit} n-grams of samples in the training text', sample),
                    (f'  {n}-{unit} n-grams of held-out text (baseline)', held)]
    for key, value in card['fluency']['samples'].items():
        out.append((f'samples: {key.replace("_", " ")}', value))
        if key in card['fluency'].get('held_out', {}):
            out.append((f'  held-out text: {key.replace("_", " ")}', card['fluency']['held_out'][key]))
    out.append(('samples: bits/token under the model', float(np.mean(card['samples']['bits_per_token']))))
    return out


def shown(value):
    if value is None:
        return '-'
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f'{value:,}'
    return f'{value:.4f}'


def table(cards):
    """The Markdown table of every number: one column per card, and their difference for two."""
    all_rows = [dict(rows(card)) for card in cards]
    labels = list(dict.fromkeys(label for card in cards for label, _ in rows(card)))
    head = ['', *(f'`{name_of(card)}`' for card in cards)] + (['difference'] if len(cards) == 2 else [])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for label in labels:
        values = [r.get(label) for r in all_rows]
        cells = [label.replace('  ', '&nbsp;&nbsp;'), *map(shown, values)]
        if len(cards) == 2:
            a, b = values
            is_number = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            cells.append(shown(b - a) if is_number else '')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def markdown(cards, pictures):
    title = ' against '.join(f'`{name_of(card)}`' for card in cards)
    parts = [f'# Report card: {title}', '']
    for card in cards:
        m = card['model']
        parts.append(f"- `{name_of(card)}`: {m['model_type']} {m['shape']}, block_size {m['block_size']},"
                     f" {m['tokenizer']} tokenizer (vocab {m['vocab_size']:,}), checkpoint `{m['checkpoint']}`,"
                     f" scored on `{m['data_dir']}`")
        if card.get('data_problem'):
            parts.append(f"  - not measured: the held-out score, calibration and memorization ({card['data_problem']})")
        if card.get('held_out'):
            h = card['held_out']
            parts.append(f"  - held out: {h['documents']:,} documents, {h['targets']:,} targets, {h['units']:,}"
                         f" {h['unit']}s; documents of median {h['document_lengths']['median']:.0f} tokens (longest"
                         f" {h['document_lengths']['max']:,}) against a window of {m['block_size']}")
        parts.append(f"  - measured in {sum(card['seconds'].values()):.0f} s ("
                     + ', '.join(f'{k} {v:.1f} s' for k, v in card['seconds'].items()) + ')')
    parts += ['', table(cards), '', NOTES, '']
    for heading, picture in pictures:
        parts += [f'## {heading}', '', f'![{heading}]({picture})', '']
    parts += ['## Samples', '', f"Drawn from the document start, seed {cards[0]['samples']['seed']}, temperature"
              f" {cards[0]['samples']['temperature']}; [each token shaded by its surprisal](samples.html).", '']
    for card in cards:
        for text in card['samples']['texts'][:2]:
            parts += [f'`{name_of(card)}`:', '', '```', text.strip()[:600], '```', '']
    return '\n'.join(parts)


NOTES = """How to read it:
- **chunked** scores every held-out target once, each document cut into windows of block_size tokens read from
  their start: a target early in a window sees little context. **sliding** scores every target once too, from
  windows `stride` tokens apart, each target after at least block_size - stride tokens of its document where the
  document has them: what a reader of long text sees. Where documents are no longer than the window, the two
  are the same number; the longer the documents, the lower the sliding score. The intervals come from drawing the
  held-out documents again with replacement (a bootstrap): how much the score owes to which documents were held out.
- **calibration**: of the targets where the model gave its top token probability p, about p should be right.
  The error is the mean gap (0 is perfect); the fitted temperature is the one (of a grid from 0.5 to 2) under which
  the held-out loss is lowest: above 1, the model is overconfident.
- **memorization**: a model that learned the language writes n-grams the corpus has about as often as other text
  of the language does (the held-out baseline); one that copies its corpus, far more often, most of all at large n.
"""


# ---------------------------------------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------------------------------------

def figure(width=7, height=4, columns=1):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(1, columns, figsize=(width, height), squeeze=False)


def save(plt, fig, folder, name):
    fig.tight_layout()
    with storage.atomic_write(os.path.join(folder, name)) as f:
        fig.savefig(f, format='png', dpi=100)
    plt.close(fig)
    return name


def plot_by_position(cards, folder):
    plt, fig, axes = figure()
    ax = axes[0, 0]
    for card in cards:
        if 'by_position' in card:
            values = card['by_position']['bits_per_token']
            ax.plot(range(len(values)), values, label=name_of(card))
    ax.set_xlabel('position of the target in its window (tokens of context before it)')
    ax.set_ylabel('held-out bits per token')
    ax.grid(alpha=0.3)
    ax.legend()
    return save(plt, fig, folder, 'loss_by_position.png')


def plot_calibration(cards, folder):
    plt, fig, axes = figure(10, 4.5, columns=2)
    for ax, which in zip(axes[0], ('raw', 'fitted')):
        ax.plot([0, 1], [0, 1], ':', color='gray', label='perfectly calibrated')
        for card in cards:
            if 'calibration' in card:
                c = card['calibration'][which]
                points = [(x, y) for x, y in zip(c['confidence'], c['accuracy']) if x is not None]
                ax.plot(*zip(*points), 'o-', label=f"{name_of(card)}: error {c['ece']:.3f}")
        t = ', '.join(f"{card['calibration'][which]['temperature']:.2f}" for card in cards if 'calibration' in card)
        ax.set_title('as trained (temperature 1)' if which == 'raw' else f'at the fitted temperature ({t})')
        ax.set_xlabel("the top token's probability")
        ax.set_ylabel('share of them that were right')
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(plt, fig, folder, 'calibration.png')


def plot_memorization(cards, folder):
    plt, fig, axes = figure()
    ax = axes[0, 0]
    for card in cards:
        mem = card.get('memorization')
        if mem:
            line, = ax.plot(mem['n'], mem['samples'], 'o-', label=f'{name_of(card)}: samples')
            ax.plot(mem['n'], mem['held_out'], 'o--', color=line.get_color(), alpha=0.6,
                    label=f'{name_of(card)}: held-out text')
    unit = cards[0]['model']['unit']
    ax.set_xlabel(f'n-gram length ({unit}s)')
    ax.set_ylabel('share of n-grams found in the training text')
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(plt, fig, folder, 'memorization.png')


# ---------------------------------------------------------------------------------------------------------
# the samples, shaded
# ---------------------------------------------------------------------------------------------------------

def shaded(tokens, surprisals):
    """HTML of tokens (their texts), each on a background as red as its surprisal (bits) is high."""
    spans = []
    for text, b in zip(tokens, surprisals):
        alpha = min(b / SHADE_BITS, 1.0)
        spans.append(f'<span style="background: rgba(220, 40, 30, {alpha:.2f})" title="{b:.2f} bits">'
                     f'{html.escape(text).replace(chr(10), "&#8629;<br>")}</span>')
    return ''.join(spans)


def write_samples_page(cards, path):
    parts = ['<!doctype html><html><head><meta charset="utf-8"><title>samples</title><style>',
             'body { font-family: sans-serif; max-width: 60em; margin: 2em auto; }',
             '.sample { font-family: monospace; white-space: pre-wrap; line-height: 1.6; border: 1px solid #ccc;'
             ' padding: 0.5em; margin-bottom: 1.5em; }</style></head><body>',
             f'<h1>Samples, each token shaded by its surprisal</h1><p>White: the model was sure of it; full red:'
             f' {SHADE_BITS} bits or more. Hover over a token for its bits. Only the tokens the model saw in one'
             f' window are shaded (a GPT: its first block_size).</p>']
    for card in cards:
        drawn = card['samples']
        parts.append(f'<h2>{html.escape(name_of(card))}</h2>')
        for texts, surprisal in zip(drawn['token_texts'], drawn['surprisal_bits']):
            parts.append(f'<p>{np.mean(surprisal):.2f} bits/token</p><div class="sample">'
                         f'{shaded(texts, surprisal)}</div>')
    parts.append('</body></html>')
    with storage.atomic_write(path, 'w') as f:
        f.write('\n'.join(parts))
