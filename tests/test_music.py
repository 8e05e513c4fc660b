"""Music as a sequence: notes on a grid, the midi event tokenizer, prepare.py's music sources, training on
the Bach chorales and sampling to a .mid file."""
import os

from hypothesis import given, settings
from hypothesis import strategies as st
import mido
import numpy as np
import pytest

from configurator import UserError
from conftest import TINY_LSTM, run_script
import prepare
import sample
from slm import music, storage
from slm import tokenizer as tok
import train


N = music.Note
MIDI = tok.MidiTokenizer()  # a grid of 4 steps per quarter note, shifts of up to 32 steps


def on(p):
    return MIDI.note_on + p


def off(p):
    return MIDI.note_off + p


def shift(k):
    return MIDI.time_shift + k


def test_vocabulary_layout():
    assert MIDI.vocab_size == 4 + 128 + 128 + 32
    assert [MIDI.vocab[i] for i in (0, 1, 2, 3, on(0), on(127), off(0), off(127), shift(1), shift(32))] == [
        '<?>', '<s>', '</s>', '<>', 'NOTE_ON_0', 'NOTE_ON_127', 'NOTE_OFF_0', 'NOTE_OFF_127', 'TIME_SHIFT_1',
        'TIME_SHIFT_32']
    assert (on(60), off(60), shift(4)) == (64, 192, 263)


def test_exact_tokens_of_a_small_piece():
    # a C major chord for a quarter note; G an eighth, struck again right away for a sixteenth (ends before it
    # starts again); then a rest of 40 steps (more than one shift) before a low A of a whole note
    piece = [N(64, 0, 4), N(60, 0, 4), N(67, 0, 4), N(67, 4, 2), N(67, 6, 1), N(45, 47, 16)]
    ids = MIDI.encode(piece)
    assert ids == [on(60), on(64), on(67), shift(4), off(60), off(64), off(67), on(67), shift(2), off(67), on(67),
                   shift(1), off(67), shift(32), shift(8), on(45), shift(16), off(45)]
    assert MIDI.decode(ids[:5]) == 'NOTE_ON_60 NOTE_ON_64 NOTE_ON_67 TIME_SHIFT_4 NOTE_OFF_60 '
    assert MIDI.encode(MIDI.decode(ids)) == ids
    assert MIDI.encode('NOTE_ON_60\n TIME_SHIFT_1 <s>') == [on(60), MIDI.eos_id, shift(1), MIDI.bos_id]
    assert MIDI.encode_lines([piece]) == [[MIDI.bos_id, *ids, MIDI.eos_id]]
    assert MIDI.to_notes(ids) == sorted(piece, key=lambda n: (n.onset, n.pitch))
    assert tok.from_meta(MIDI.to_meta()).encode(piece) == ids


def test_grid_rules():
    # onsets and ends round to the grid (4 steps per quarter); a note that rounds to nothing lasts one step
    assert music.on_grid([(60, 0.0, 1.0), (62, 1.1, 1.4), (64, 2.0, 2.01)], 4) == [
        N(60, 0, 4), N(62, 4, 2), N(64, 8, 1)]
    # unisons: a pitch struck while it sounds ends the earlier note there; of two struck together the longer stays
    assert music.normalize([(67, 0, 8), (67, 4, 2), (60, 0, 2), (60, 0, 6)]) == [
        N(60, 0, 6), N(67, 0, 4), N(67, 4, 2)]
    assert music.transpose([N(126, 0, 1)], 1) == [N(127, 0, 1)] and music.transpose([N(126, 0, 1)], 2) is None


def test_invalid_orders_decode_by_the_documented_rules(tmp_path):
    ids = [MIDI.pad_id, off(50),                    # a NOTE_OFF of a pitch not sounding: ignored
           on(60), shift(2), on(60), shift(2),       # struck again while sounding: two notes of 2 steps
           on(62), off(62),                          # ended at once: lasts no time, dropped
           on(64), MIDI.bos_id, MIDI.unk_id, shift(3), MIDI.eos_id,  # </s> ends 60 and 64 at step 7
           shift(1), on(67), shift(5)]               # never ended: ends with the sequence
    assert MIDI.to_notes(ids) == [N(60, 0, 2), N(60, 2, 5), N(64, 4, 3), N(67, 8, 5)]
    assert MIDI.to_notes([]) == [] and MIDI.to_notes([off(1), MIDI.eos_id, shift(4)]) == []
    music.write_midi([], tmp_path / 'empty.mid', 4)  # nothing to play is still a valid file
    assert music.read_midi(str(tmp_path / 'empty.mid'), 4) == []


notes_strategy = st.lists(st.tuples(st.integers(0, 127), st.integers(0, 300), st.integers(1, 80)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(notes_strategy, st.sampled_from([1, 4, 12]))
def test_round_trip_notes_tokens_midi_notes(spans, steps_per_quarter):
    """notes -> tokens -> notes -> .mid -> notes gives back the same pitches, onsets and durations."""
    import tempfile
    midi_tokenizer = tok.MidiTokenizer(steps_per_quarter)
    notes = music.normalize(spans)
    ids = midi_tokenizer.encode(notes)
    assert midi_tokenizer.to_notes(ids) == notes
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, 'piece.mid')
        music.write_midi(midi_tokenizer.to_notes(ids), path, steps_per_quarter)
        assert music.read_midi(path, steps_per_quarter) == notes


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, MIDI.vocab_size - 1), max_size=200))
def test_any_token_sequence_plays(ids):
    notes = MIDI.to_notes(ids)
    assert all(0 <= n.pitch < 128 and n.onset >= 0 and n.duration >= 1 for n in notes)
    assert music.normalize(notes) == notes  # a valid piece: re-encoding it gives the same notes
    assert MIDI.to_notes(MIDI.encode(notes)) == notes


def test_a_chorale_round_trips_through_a_midi_file(tmp_path):
    path = music.chorale_paths()[0]
    notes = music.read_piece(path, 4)
    assert len(notes) > 100 and {n.pitch for n in notes} <= set(range(36, 90))
    music.write_midi(MIDI.to_notes(MIDI.encode(notes)), tmp_path / 'chorale.mid', 4, program=19)
    assert music.read_piece(str(tmp_path / 'chorale.mid'), 4) == notes


def documents(data_dir, split):
    """Each document of a prepared music split as notes, after checking its <s> ... </s> framing."""
    meta = storage.load_meta(data_dir)
    midi_tokenizer = tok.from_meta(meta['tokenizer'])
    tokens, offsets = storage.open_split(data_dir, split, meta)
    pieces = []
    for start, end in zip(offsets[:-1], offsets[1:]):
        ids = tokens[start:end].tolist()
        assert ids[0] == tok.BOS_ID and ids[-1] == tok.EOS_ID and tok.EOS_ID not in ids[1:-1]
        pieces.append(midi_tokenizer.to_notes(ids))
    return pieces


def test_prepare_bach(bach_data):
    meta = storage.load_meta(bach_data)
    assert meta['source'] == 'bach' and meta['tokenizer'] == MIDI.to_meta() and meta['vocab_size'] == 292
    paths = np.array(music.chorale_paths())
    order = np.random.default_rng(1337).permutation(len(paths))  # the split every source gets
    val_paths, train_paths = paths[order[:4]], paths[order[4:10]]
    val = documents(bach_data, 'val')
    assert val == [music.read_piece(p, 4) for p in val_paths]  # as written: no transposition
    train_pieces = documents(bach_data, 'train')
    expected = [music.transpose(music.read_piece(p, 4), s) for p in train_paths for s in (-1, 0, 1)]
    assert train_pieces == expected
    counts = meta['splits']
    assert (counts['train']['documents'], counts['val']['documents']) == (18, 4)
    assert counts['val']['notes'] == sum(map(len, val)) and 'chars' not in counts['val']


def test_prepare_a_folder_of_midi_files(tmp_path, capsys):
    folder = tmp_path / 'mine'
    (folder / 'more').mkdir(parents=True)
    pieces = [[N(60 + i, 4 * j, 4) for j in range(8)] for i in range(5)]
    for i, piece in enumerate(pieces):
        music.write_midi(piece, folder / ('more' if i % 2 else '.') / f'piece{i}.mid', 4)
    (folder / 'broken.mid').write_bytes(b'not a MIDI file')
    (folder / 'notes.txt').write_text('not music')
    data_dir = str(tmp_path / 'data')
    prepare.main([data_dir, f'--input={folder}', '--val_fraction=0.2', '--num_proc=1'])
    assert 'warning: skipping' in capsys.readouterr().out  # broken.mid
    meta = storage.load_meta(data_dir)
    assert meta['source'] == 'midi' and meta['origin'] == str(folder)
    found = documents(data_dir, 'train') + documents(data_dir, 'val')
    assert sorted(found) == sorted(pieces)


@pytest.mark.parametrize('args, message', [
    (['--tokenizer=char'], 'does not fit source bach'),
    (['--source=midi'], 'needs --input=FOLDER'),
    (['--transpose=-1'], '--transpose must be 0 or more'),
])
def test_prepare_music_errors(tmp_path, args, message):
    with pytest.raises(UserError, match=message):
        prepare.main([str(tmp_path / 'bach'), *args])


def test_prepare_empty_folder(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match='has no .mid or .midi files'):
        prepare.main([str(tmp_path / 'data'), f'--input={tmp_path / "empty"}'])


def test_train_reports_bits_per_note(bach_checkpoint, bach_data):
    _, result = bach_checkpoint
    assert 'val_bits_per_char' not in result
    meta = storage.load_meta(bach_data)
    tokens_per_note = meta['splits']['val']['tokens'] / meta['splits']['val']['notes']
    assert result['val_bits_per_note'] == pytest.approx(result['val_bits_per_token'] * tokens_per_note)
    assert result['val_loss'] < np.log(MIDI.vocab_size) - 1  # it learned something in 30 steps


def test_sample_writes_a_midi_file(bach_checkpoint, tmp_path, capsys):
    out_dir, _ = bach_checkpoint
    path = tmp_path / 'sample.mid'
    texts = sample.main([f'--out_dir={out_dir}', f'--out={path}', '--max_new_tokens=120', '--device=cpu',
                         '--start=NOTE_ON_60 NOTE_ON_67', '--program=19', '--tempo=80'])
    midi = mido.MidiFile(path)  # mido reads it back
    assert midi.ticks_per_beat == 4 * music.TICKS_PER_STEP
    messages = list(midi)
    assert messages[0].type == 'set_tempo' and mido.tempo2bpm(messages[0].tempo) == 80
    assert [m.program for m in messages if m.type == 'program_change'] == [19]
    played = MIDI.to_notes(MIDI.encode(texts[0]))  # what the printed events play, the prompt included
    assert music.read_midi(str(path), 4) == played
    assert played and played[0].onset == 0 and {60, 67} <= {n.pitch for n in played if n.onset == 0}
    assert f'wrote {path}' in capsys.readouterr().err


def test_sample_several_midi_files_and_a_piano_roll(bach_checkpoint, tmp_path):
    out_dir, _ = bach_checkpoint
    result = run_script('sample.py', f'--out_dir={out_dir}', f'--out={tmp_path / "s.mid"}', '--num_samples=2',
                        '--max_new_tokens=60', '--device=cpu')
    assert result.returncode == 0, result.stderr
    assert all(mido.MidiFile(tmp_path / f's-{i}.mid').length >= 0 for i in (1, 2))
    sample.main([f'--out_dir={out_dir}', f'--out={tmp_path / "roll.png"}', '--max_new_tokens=60', '--device=cpu'])
    assert (tmp_path / 'roll.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_music_output_needs_a_music_model(tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match='writes music'):
        sample.main([f'--out_dir={tiny_checkpoint}', f'--out={tmp_path / "x.mid"}', '--max_new_tokens=5'])


def test_lstm_trains_and_samples_music(bach_data, tmp_path):
    out_dir = str(tmp_path / 'lstm')
    train.main([f'--data_dir={bach_data}', f'--out_dir={out_dir}', '--max_iters=10', '--eval_interval=10',
                *TINY_LSTM])
    path = tmp_path / 'lstm.mid'
    texts = sample.main([f'--out_dir={out_dir}', f'--out={path}', '--max_new_tokens=80', '--device=cpu'])
    assert music.read_midi(str(path), 4) == MIDI.to_notes(MIDI.encode(texts[0]))


def test_prompt_with_an_unknown_event(bach_checkpoint):
    out_dir, _ = bach_checkpoint
    with pytest.raises(UserError, match="unknown MIDI event 'C4'"):
        sample.main([f'--out_dir={out_dir}', '--start=NOTE_ON_60 C4', '--max_new_tokens=5', '--device=cpu'])
