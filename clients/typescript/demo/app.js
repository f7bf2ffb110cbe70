// The demo chat page: one chat, on the courier SDK (the minified bundle, /sdk/courier.min.js).
// Signs in from the URL, for local development only:
//   ?token=<jwt>&chat=<id>[&ws=ws://host:8080/ws][&device=<id>][&names=1:alice,2:bob]
// The log is kept in localStorage, written by the message handler before it returns:
// the SDK acks a delivery only then, and its persistent outbox (IndexedDB) keeps what
// was typed but not yet acked across a reload.
import { connect } from '/sdk/courier.min.js';

const params = new URLSearchParams(location.search);
const token = params.get('token');
const chat = Number(params.get('chat') ?? '1');
// One device per tab (kept across reloads of the tab): two tabs of one device would
// share its deliveries, and its outbox.
const device =
  params.get('device') ??
  sessionStorage.getItem('courier-demo-device') ??
  `web-${Math.random().toString(36).slice(2, 8)}`;
sessionStorage.setItem('courier-demo-device', device);
const wsUrl = params.get('ws') ?? `ws://${location.hostname || '127.0.0.1'}:8080/ws`;
const names = new Map(
  (params.get('names') ?? '').split(',').filter(Boolean).map((pair) => pair.split(':')).map(([id, name]) => [Number(id), name]),
);

const $ = (id) => document.getElementById(id);
const logEl = $('log');
const stateEl = $('state');
const input = $('text');
const button = $('send');

function claims(jwt) {
  try {
    return JSON.parse(atob(jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return {};
  }
}

function notice(text) {
  const el = $('notice');
  el.textContent = text;
  el.hidden = !text;
}

if (!token) {
  notice('Open this page with ?token=<jwt>&chat=<id> — scripts/dev prints a link for each demo user.');
  stateEl.textContent = 'signed out';
  stateEl.dataset.state = 'closed';
  throw new Error('no token in the URL');
}

const me = claims(token);
if (me.username) names.set(me.id, me.username);
const nameOf = (id) => names.get(id) ?? `user ${id}`;
const colorOf = (id) => `hsl(${(id * 67) % 360} 55% 48%)`;

$('title').textContent = `Chat ${chat}`;
$('subtitle').textContent = `signed in as ${nameOf(me.id)} (#${me.id}) · device ${device}`;
$('avatar').textContent = nameOf(me.id).slice(0, 1).toUpperCase();
$('avatar').style.background = colorOf(me.id);
document.title = `${nameOf(me.id)} · chat ${chat} · courier`;

// --- the log: what the app has, kept across reloads --------------------------------
const storeKey = `courier-demo:${new URL(wsUrl).host}:${me.id}:${device}`;
/** @type {Array<{kind:'in', id:number, chatId:number, senderId:number, text:string, at:number} | {kind:'out', key:string, chatId:number, text:string, status:string, stored:boolean, error?:string, at:number}>} */
const log = JSON.parse(localStorage.getItem(storeKey) ?? '[]');
const save = () => localStorage.setItem(storeKey, JSON.stringify(log.slice(-500)));

const time = (at) => new Date(at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
const TICKS = { queued: '○', sent: '✓', acked: '✓✓', failed: '✕' };
const HINTS = {
  queued: 'in the outbox, not yet written to courier',
  sent: 'written to courier, waiting for its ack',
  acked: 'courier stored it for every recipient',
  failed: 'courier refused it',
};

function statusText(entry) {
  if (entry.status === 'failed') return `failed: ${entry.error ?? 'refused'}`;
  if (entry.status === 'queued') return entry.stored ? 'queued · saved' : 'queued';
  return entry.status;
}

function render(entry) {
  const li = document.createElement('li');
  const before = log[log.indexOf(entry) - 1];
  const continued = before && before.kind === entry.kind && before.senderId === entry.senderId;
  li.className = `msg ${entry.kind}${continued ? ' cont' : ''}`;
  const bubble = document.createElement('div');
  bubble.className = 'bubble';
  bubble.textContent = entry.text;
  if (entry.kind === 'in') {
    li.dataset.id = String(entry.id);
    li.dataset.sender = String(entry.senderId);
    const from = document.createElement('span');
    from.className = 'from';
    from.textContent = nameOf(entry.senderId);
    from.style.color = colorOf(entry.senderId);
    li.append(from, bubble);
    const meta = document.createElement('span');
    meta.className = 'meta';
    meta.textContent = time(entry.at);
    li.append(meta);
  } else {
    li.dataset.key = entry.key;
    li.dataset.status = entry.status;
    li.dataset.stored = String(entry.stored);
    const meta = document.createElement('span');
    meta.className = 'meta';
    const tick = document.createElement('span');
    tick.className = 'tick';
    tick.textContent = TICKS[entry.status] ?? '';
    tick.title = HINTS[entry.status] ?? '';
    const label = document.createElement('span');
    label.className = 'status';
    label.textContent = `${time(entry.at)} · ${statusText(entry)}`;
    meta.append(label, tick);
    li.append(bubble, meta);
  }
  if (entry.chatId !== chat) {
    const other = document.createElement('span');
    other.className = 'other-chat';
    other.textContent = `in chat ${entry.chatId}`;
    li.prepend(other);
  }
  return li;
}

const elements = new Map(); // entry → its <li>
function show(entry) {
  const li = render(entry);
  const old = elements.get(entry);
  if (old) old.replaceWith(li);
  else {
    const atBottom = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 40;
    logEl.append(li);
    if (atBottom || entry.kind === 'out') logEl.scrollTop = logEl.scrollHeight;
  }
  elements.set(entry, li);
}
log.forEach(show);

// --- the SDK ------------------------------------------------------------------------
const client = connect(wsUrl, { token, device, persist: true });
window.courier = client; // for the console (and the browser tests)

let countdown;
client.on('state', (event) => {
  clearInterval(countdown);
  stateEl.dataset.state = event.state;
  stateEl.textContent = {
    connecting: 'connecting…',
    open: 'connected',
    reconnecting: 'reconnecting…',
    closed: `closed${event.error ? `: ${event.error.code}` : ''}`,
  }[event.state];
  if (event.state === 'reconnecting') {
    const at = Date.now() + event.delay;
    const tick = () => (stateEl.textContent = `reconnecting in ${Math.max(0, (at - Date.now()) / 1000).toFixed(1)} s`);
    tick();
    countdown = setInterval(tick, 100);
  }
  stateEl.title = event.reason ?? '';
  const closed = event.state === 'closed';
  input.disabled = button.disabled = closed;
  if (closed && event.error) notice(`courier refused this session: ${event.error.message}`);
});

client.on('error', (error) => console.warn('courier:', error.code, error.message));

const outgoing = new Map(log.filter((e) => e.kind === 'out').map((e) => [e.key, e]));
client.on('outbox', (o) => {
  let entry = outgoing.get(o.key);
  if (!entry) {
    entry = { kind: 'out', key: o.key, chatId: o.chatId, text: o.text, at: Date.now() };
    outgoing.set(o.key, entry);
    log.push(entry);
  }
  Object.assign(entry, { status: o.status, stored: o.stored, error: o.error?.code });
  save();
  show(entry);
});

client.onMessages((messages) => {
  for (const m of messages) {
    const entry = { kind: 'in', id: m.id, chatId: m.chatId, senderId: m.senderId, text: m.text, at: Date.now() };
    log.push(entry);
    show(entry);
  }
  save(); // in the app's storage before the SDK acks
});

client.ready.then(() => {
  // Whatever the log still shows as pending but the SDK's outbox no longer holds was
  // acked (or refused) before the reload, unless it was never saved.
  const pending = new Set(client.outbox().map((o) => o.key));
  for (const entry of outgoing.values()) {
    if ((entry.status === 'queued' || entry.status === 'sent') && !pending.has(entry.key)) {
      entry.status = entry.stored || entry.status === 'sent' ? 'acked' : 'failed';
      if (entry.status === 'failed') entry.error = 'lost before it was saved';
      show(entry);
    }
  }
  save();
});

input.disabled = button.disabled = false;
input.focus();
$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  client.send(chat, text).catch((error) => console.warn('not sent:', error.code, error.message));
});
