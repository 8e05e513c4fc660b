"""Music as notes on a time grid: read from music21 scores and .mid files, written to .mid files, drawn as a
piano roll. tokenizer.py's midi kind turns these notes into token ids and back.

A note is (pitch, onset, duration): pitch a MIDI number 0-127 (60 is middle C), onset and duration whole steps
of a grid of steps_per_quarter steps per quarter note (4: sixteenth notes). Every reader ends in on_grid, the
one place where times are quantized and a piece becomes a note list, so the Bach chorales, a user's .mid files
and a decoded sample all obey the same rules:

    onsets and ends are rounded to the nearest step; a note that rounds to nothing lasts one step
    one pitch sounds once at a time: a note that starts while the same pitch still sounds (two voices in
    unison, say) ends the earlier one there; of two that start together, the longer is kept
    the list is sorted by onset, then pitch

Time is counted in quarter notes, not seconds: tempo changes in a .mid file are ignored, and a written file
plays at one tempo (tempo_qpm). Velocities are not kept (the chorales have none): notes play at VELOCITY.
"""
import collections
import os

from slm import storage


Note = collections.namedtuple('Note', 'pitch onset duration')
PITCHES = 128          # MIDI note numbers 0-127
VELOCITY = 80          # of every written note
TICKS_PER_STEP = 96    # written files have steps_per_quarter * this ticks per beat, so every step is whole ticks
DRUM_CHANNEL = 9       # General MIDI channel 10: percussion, whose "pitches" are instruments; not read


def on_grid(spans, steps_per_quarter):
    """Notes on the grid from (pitch, start, end) spans with times in quarter notes (see the module docstring)."""
    notes = []
    for pitch, start, end in spans:
        onset = round(start * steps_per_quarter)
        notes.append(Note(int(pitch), onset, max(1, round(end * steps_per_quarter) - onset)))
    return normalize(notes)


def normalize(notes):
    """Sorted notes in which a pitch never overlaps itself (the rules of the module docstring)."""
    kept, last = [], {}  # last: pitch -> index in kept of its latest note
    for note in sorted(map(Note._make, notes), key=lambda n: (n.onset, n.pitch, n.duration)):
        i = last.get(note.pitch)
        if i is not None and kept[i].onset + kept[i].duration > note.onset:
            if kept[i].onset == note.onset:
                kept[i] = None  # the same onset: the shorter (sorted first) gives way
            else:
                kept[i] = kept[i]._replace(duration=note.onset - kept[i].onset)
        last[note.pitch] = len(kept)
        kept.append(note)
    return sorted((n for n in kept if n is not None), key=lambda n: (n.onset, n.pitch))


def transpose(notes, semitones):
    """The notes moved by semitones, or None if one would leave the MIDI range 0-127."""
    moved = [Note(n.pitch + semitones, n.onset, n.duration) for n in notes]
    return moved if all(0 <= n.pitch < PITCHES for n in moved) else None


def score_notes(score, steps_per_quarter):
    """The notes of a music21 score (every part, chords as their pitches, tied notes joined)."""
    spans = []
    for element in score.stripTies().flatten().notes:
        start = float(element.offset)
        end = start + float(element.quarterLength)
        if end > start:  # grace notes take no time: left out
            spans.extend((pitch.midi, start, end) for pitch in element.pitches)
    return on_grid(spans, steps_per_quarter)


def chorale_paths():
    """Paths of the Bach chorales in music21's corpus (shipped in the PyPI package), in Riemenschneider order.

    Some numbers of that catalogue name the same file (21 of 371): each file is listed once, so no chorale can
    be in both the training and the validation split."""
    from music21 import corpus
    paths = []
    for name in corpus.chorales.Iterator(returnType='filename'):
        work = corpus.getWork(name)  # a list where the corpus has the chorale in several formats: take MusicXML
        if isinstance(work, list):
            work = next((p for p in work if str(p).endswith('.mxl')), work[0])
        paths.append(str(work))
    return list(dict.fromkeys(paths))


def read_score(path, steps_per_quarter):
    """The notes of a file music21 can parse (MusicXML, .mxl, kern, ABC, ...)."""
    from music21 import converter
    return score_notes(converter.parse(path), steps_per_quarter)


def read_midi(path, steps_per_quarter):
    """The notes of a .mid file: every track and channel but percussion; a note_on of velocity 0 is a note_off."""
    import mido
    midi = mido.MidiFile(path)
    tick, open_notes, spans = 0, {}, []  # open_notes: (channel, pitch) -> start tick
    for message in mido.merge_tracks(midi.tracks):
        tick += message.time
        if message.type not in ('note_on', 'note_off') or message.channel == DRUM_CHANNEL:
            continue
        key = (message.channel, message.note)
        if key in open_notes:  # a note_off, or a note_on of a pitch still sounding: that note ends here
            spans.append((message.note, open_notes.pop(key), tick))
        if message.type == 'note_on' and message.velocity > 0:
            open_notes[key] = tick
    spans.extend((pitch, start, tick) for (_, pitch), start in open_notes.items())  # never ended: at the end
    return on_grid([(p, start / midi.ticks_per_beat, end / midi.ticks_per_beat) for p, start, end in spans],
                   steps_per_quarter)


def read_piece(path, steps_per_quarter):
    """The notes of a .mid/.midi file (mido) or of any score music21 reads."""
    if path.lower().endswith(('.mid', '.midi')):
        return read_midi(path, steps_per_quarter)
    return read_score(path, steps_per_quarter)


def write_midi(notes, path, steps_per_quarter, tempo_qpm=100, program=0):
    """Write notes to a type-0 .mid file (atomically), one channel, at tempo_qpm quarter notes per minute.

    program is the General MIDI instrument (0 piano, 19 church organ). At one tick, note_offs come first, so
    a note that ends where the same pitch starts again is heard twice."""
    import mido
    events = sorted([(n.onset * TICKS_PER_STEP, 1, n.pitch) for n in notes] +
                    [((n.onset + n.duration) * TICKS_PER_STEP, 0, n.pitch) for n in notes])
    track = mido.MidiTrack([mido.MetaMessage('set_tempo', tempo=mido.bpm2tempo(tempo_qpm), time=0),
                            mido.Message('program_change', program=program, time=0)])
    now = 0
    for tick, is_on, pitch in events:
        kind = 'note_on' if is_on else 'note_off'
        track.append(mido.Message(kind, note=pitch, velocity=VELOCITY if is_on else 0, time=tick - now))
        now = tick
    track.append(mido.MetaMessage('end_of_track', time=0))
    midi = mido.MidiFile(type=0, ticks_per_beat=steps_per_quarter * TICKS_PER_STEP, tracks=[track])
    with storage.atomic_write(path) as f:
        midi.save(file=f)


def plot_piano_roll(notes, path, steps_per_quarter, title=''):
    """Draw notes as a piano roll (time in quarter notes across, pitch up) into a PNG file, atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    end = max((n.onset + n.duration for n in notes), default=steps_per_quarter) / steps_per_quarter
    fig, ax = plt.subplots(figsize=(min(16, 3 + end / 6), 4))
    bars = collections.defaultdict(list)  # pitch -> (start, length) of its notes, in quarter notes
    for n in notes:
        bars[n.pitch].append((n.onset / steps_per_quarter, n.duration / steps_per_quarter))
    for pitch, spans in bars.items():
        ax.broken_barh(spans, (pitch - 0.4, 0.8), facecolors='tab:blue', edgecolors='navy', linewidth=0.5)
    if notes:
        low, high = min(n.pitch for n in notes), max(n.pitch for n in notes)
        ax.set_ylim(low - 2, high + 2)
        cs = range((low // 12) * 12, high + 1, 12)
        ax.set_yticks(list(cs), [f'C{c // 12 - 1}' for c in cs])
    ax.set_xlim(0, end)
    ax.set_xlabel('time (quarter notes)')
    ax.set_ylabel('pitch')
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with storage.atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=100)
    plt.close(fig)


def piece_paths(folder):
    """Every .mid/.midi file under folder (recursively), sorted."""
    paths = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
             if name.lower().endswith(('.mid', '.midi'))]
    return sorted(paths)
