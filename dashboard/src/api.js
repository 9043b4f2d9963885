// The control plane's JSON API (relative URLs, so the page also works behind a path prefix such
// as the Kubernetes API server's service proxy). Cookies go along (same origin).

export class AuthError extends Error {}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v != null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? '?' + s : '';
}

export function apiUrl(path, params) {
  return 'api/v1/' + path + query(params);
}

async function errorText(r) {
  try {
    const body = await r.json();
    if (body && body.error) return body.error;
  } catch {
    /* not JSON */
  }
  return r.statusText;
}

export async function getJSON(path, params) {
  let r;
  try {
    r = await fetch(apiUrl(path, params), { headers: { accept: 'application/json' }, cache: 'no-store' });
  } catch (err) {
    throw new ApiError(`cannot reach the control plane (${err.message}); is it still running?`);
  }
  if (r.status === 401) throw new AuthError(await errorText(r));
  if (!r.ok) throw new ApiError(`${path}: HTTP ${r.status}: ${await errorText(r)}`, r.status);
  return r.json();
}

/**
 * Streams NDJSON from `path`: calls onOpen() once the answer's headers arrived, onLine(obj) per
 * line, and resolves when the stream ends or `signal` aborts. Throws AuthError / ApiError.
 */
export async function streamNDJSON(path, params, { signal, onOpen, onLine }) {
  let r;
  try {
    r = await fetch(apiUrl(path, params), { headers: { accept: 'application/x-ndjson' }, cache: 'no-store', signal });
  } catch (err) {
    if (signal && signal.aborted) return;
    throw new ApiError(`cannot reach the control plane (${err.message}); is it still running?`);
  }
  if (r.status === 401) throw new AuthError(await errorText(r));
  if (!r.ok) throw new ApiError(`HTTP ${r.status}: ${await errorText(r)}`, r.status);
  onOpen();
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let obj;
        try {
          obj = JSON.parse(line);
        } catch {
          obj = { error: 'unreadable line from the control plane: ' + line.slice(0, 200) };
        }
        onLine(obj);
      }
    }
  } catch (err) {
    if (signal && signal.aborted) return;
    throw new ApiError(`the tap stream broke: ${err.message}`);
  }
}
