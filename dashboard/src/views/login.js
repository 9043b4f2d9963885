// Login form: POST `login` with field `token`; the control plane sets the session cookie and
// redirects to the page.
import { h } from '../dom.js';

export function renderLogin(main, message) {
  main.dataset.view = 'login';
  main.replaceChildren(
    h(
      'section',
      { class: 'login' },
      h('h1', {}, 'Sign in to the onemesh dashboard'),
      h(
        'p',
        {},
        'The control plane asks for its API token. ',
        h('code', {}, 'onemesh up'),
        ' prints a login URL (',
        h('code', {}, 'http://127.0.0.1:8084/login?token=…'),
        ') and the token itself; in Kubernetes, ',
        h('code', {}, 'onemesh dashboard'),
        ' opens the page for you.',
      ),
      message ? h('p', { class: 'bad' }, message) : null,
      h(
        'form',
        { method: 'post', action: 'login', 'data-testid': 'login-form' },
        h('label', {}, 'Token ', h('input', { type: 'password', name: 'token', autocomplete: 'off', required: true, autofocus: true, 'data-testid': 'login-token' })),
        h('button', { type: 'submit', 'data-testid': 'login-submit' }, 'Sign in'),
      ),
    ),
  );
}
