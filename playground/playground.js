// The playground page: settings -> POST /api/generate (a stream of server-sent events, one per token) -> a box
// per token; a click on a token -> POST /api/next with the tokens before it -> the bar chart.
'use strict';

const SETTINGS = ['temperature', 'top_k', 'top_p', 'max_new_tokens', 'seed'];
const $ = (id) => document.getElementById(id);
const state = { ids: [], prompt_length: 0, selected: null, model: null, controller: null, refresh: null };

function settings() {
  const values = {};
  for (const key of SETTINGS) values[key] = Number($(key).value);
  return values;
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = !message;
}

async function post(route, body) {
  const response = await fetch(route, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    signal: state.controller ? state.controller.signal : undefined,
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON: the status says it */ }
    throw new Error(message);
  }
  return response;
}

function tokenBox(text, index, isPrompt) {
  const box = document.createElement('span');
  box.className = 'token ' + (isPrompt ? 'prompt' : 'new');
  box.dataset.index = index;
  if (text.includes('\n')) {  // a line break shows as a mark, then breaks the line
    const mark = document.createElement('span');
    mark.className = 'eol';
    mark.textContent = '\u21b5';
    box.append(mark, text);
  } else {
    box.textContent = text;
  }
  box.title = `token ${index}: id ${state.ids[index]}`;
  return box;
}

function describeModel(m) {
  const shape = m.model_type === 'gpt' ? `${m.n_layer} x ${m.n_embd}, block ${m.block_size}` :
    `${m.n_layer} layers of ${m.n_embd}`;
  return `${m.checkpoint}: ${m.model_type.toUpperCase()} ${shape}, ${m.parameters.toLocaleString()} parameters,` +
    ` ${m.tokenizer} tokenizer of ${m.vocab_size.toLocaleString()} ids, on ${m.device}` +
    (m.iter_num != null ? `, trained ${m.iter_num.toLocaleString()} iterations` : '');
}

async function loadModel() {
  const m = await (await fetch('/api/model')).json();
  state.model = m;
  $('model').textContent = describeModel(m);
  for (const key of SETTINGS) $(key).value = m.defaults[key];
  $('max_new_tokens').max = m.limits.max_new_tokens;
  $('prompt').maxLength = m.limits.max_prompt_chars;
  $('prompt').placeholder = m.is_music ? 'events, e.g. NOTE_ON_60 TIME_SHIFT_4 (or nothing)' : 'type a prompt';
  showValues();
}

function showValues() {
  $('temperature-value').textContent = Number($('temperature').value).toFixed(2);
  $('top_p-value').textContent = Number($('top_p').value).toFixed(2);
}

function readEvents(buffer, onEvent) {
  // server-sent events: blocks separated by a blank line, each 'event: NAME' and 'data: JSON'
  let end;
  while ((end = buffer.indexOf('\n\n')) >= 0) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    const name = /^event: (.*)$/m.exec(block)[1];
    const data = JSON.parse(/^data: (.*)$/m.exec(block)[1]);
    onEvent(name, data);
  }
  return buffer;
}

async function generate() {
  showError('');
  state.controller = new AbortController();
  $('generate').disabled = true;
  $('stop').disabled = false;
  $('status').textContent = 'waiting for the model...';
  $('distribution').hidden = true;
  $('music').hidden = true;
  const output = $('output');
  try {
    const response = await post('/api/generate', { prompt: $('prompt').value, ...settings() });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '', count = 0;
    const onEvent = (name, data) => {
      if (name === 'start') {
        output.replaceChildren();
        state.ids = data.ids.slice();
        state.prompt_length = data.ids.length;
        state.selected = null;
        data.tokens.forEach((text, i) => { if (text) output.append(tokenBox(text, i, true)); });
        $('status').textContent = 'generating...';
      } else if (name === 'token') {
        state.ids.push(data.id);
        output.append(tokenBox(data.text, state.ids.length - 1, false));
        count += 1;
        if (count % 50 === 0) $('status').textContent = `generating... ${count} tokens`;
      } else if (name === 'done') {
        output.dataset.done = 'true';
        $('status').textContent = `${data.tokens} tokens in ${data.seconds.toFixed(2)} s` +
          ` (${Math.round(data.tokens_per_s).toLocaleString()} tokens/s, the prompt read included)`;
      } else if (name === 'error') {
        showError(data.error);
      }
    };
    output.dataset.done = 'false';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = readEvents(buffer + value, onEvent);
    }
    if (state.model.is_music) await showMusic();
  } catch (error) {
    if (error.name === 'AbortError') $('status').textContent = `stopped after ${state.ids.length} tokens`;
    else { showError(error.message); $('status').textContent = ''; }
  } finally {
    $('generate').disabled = false;
    $('stop').disabled = true;
    state.controller = null;
  }
}

async function showDistribution(index) {
  const boxes = $('output').querySelectorAll('.token');
  boxes.forEach((box) => box.classList.toggle('selected', Number(box.dataset.index) === index));
  state.selected = index;
  const before = state.ids.slice(0, index);
  try {
    const { rows } = await (await post('/api/next', { ids: before, n: 10, token: state.ids[index], ...settings() }))
      .json();
    showError('');
    drawBars(rows, state.ids[index], index);
  } catch (error) {
    showError(error.message);
  }
}

function visible(text) {  // a token's text with its whitespace shown
  return text.replace(/\n/g, '\u21b5').replace(/ /g, '\u2423').replace(/\t/g, '\u21e5') || '\u2205';
}

function drawBars(rows, chosen, index) {
  const s = settings();
  const how = index < state.prompt_length ? 'given in the prompt'
    : `drawn at temperature ${s.temperature}, top-k ${s.top_k}, top-p ${s.top_p}`;
  $('distribution-title').textContent = `token ${index} (${how}): the 10 likeliest next tokens after the ${index}` +
    ` before it` + (rows.length > 10 ? ', and this one' : '');
  const bars = $('bars');
  bars.replaceChildren();
  for (const row of rows) {
    const label = document.createElement('div');
    label.className = 'bar-label';
    label.textContent = state.model.tokenizer === 'midi' ? row.text.trim() : visible(row.text);
    const track = document.createElement('div');
    track.className = 'bar-track';
    const model = document.createElement('div');
    model.className = 'bar-model';
    model.style.width = `${100 * row.probability}%`;
    const drawn = document.createElement('div');
    drawn.className = 'bar-drawn';
    drawn.style.width = `${100 * row.drawn}%`;
    track.append(model, drawn);
    const value = document.createElement('div');
    value.className = 'bar-value';
    value.textContent = `#${row.rank}: ${(100 * row.probability).toFixed(1)}% \u2192 ${(100 * row.drawn).toFixed(1)}%`;
    const cells = [label, track, value];
    const wrapper = document.createElement('div');
    wrapper.className = 'bar-row' + (row.id === chosen ? ' bar-row-chosen' : '');
    wrapper.style.display = 'contents';
    wrapper.dataset.id = row.id;
    wrapper.append(...cells);
    bars.append(wrapper);
  }
  $('distribution').hidden = false;
}

async function showMusic() {
  const { notes, steps_per_quarter } = await (await post('/api/notes', { ids: state.ids })).json();
  const canvas = $('roll'), ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (notes.length) {
    const low = Math.min(...notes.map((n) => n.pitch)) - 2, high = Math.max(...notes.map((n) => n.pitch)) + 2;
    const end = Math.max(...notes.map((n) => n.onset + n.duration));
    const x = (t) => 40 + (canvas.width - 50) * t / end, y = (p) => canvas.height - 20 - (canvas.height - 30) *
      (p - low) / (high - low);
    ctx.fillStyle = '#eee';
    for (let q = 0; q <= end; q += steps_per_quarter * 4) ctx.fillRect(x(q), 0, 1, canvas.height - 20);
    ctx.fillStyle = '#2f6fd0';
    for (const n of notes) ctx.fillRect(x(n.onset), y(n.pitch) - 3, Math.max(2, x(n.onset + n.duration) - x(n.onset) - 1), 6);
    ctx.fillStyle = '#445';
    ctx.fillText(`${notes.length} notes, ${end / steps_per_quarter} quarter notes; pitch ${low + 2}-${high - 2}`, 40, canvas.height - 5);
  }
  const midi = await (await post('/api/midi', { ids: state.ids })).blob();
  $('midi').href = URL.createObjectURL(midi);
  $('music').hidden = false;
}

$('generate').addEventListener('click', generate);
$('stop').addEventListener('click', () => state.controller && state.controller.abort());
$('output').addEventListener('click', (event) => {
  const box = event.target.closest('.token');
  if (box && Number(box.dataset.index) > 0) showDistribution(Number(box.dataset.index));
});
for (const key of SETTINGS) {
  $(key).addEventListener('input', () => {
    showValues();
    if (state.selected !== null) {  // watch the distribution change with the settings
      clearTimeout(state.refresh);
      state.refresh = setTimeout(() => showDistribution(state.selected), 120);
    }
  });
}
loadModel().catch((error) => showError(`cannot read the model: ${error.message}`));
