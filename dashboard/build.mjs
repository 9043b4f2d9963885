// Builds the dashboard into ../crates/control/dashboard/ (index.html, assets: app.js, app.css,
// licenses.txt). `node build.mjs --check` builds in memory and fails when the committed files
// differ (stale output), without writing anything.
import * as esbuild from 'esbuild';
import { readFileSync, writeFileSync, mkdirSync, existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'crates', 'control', 'dashboard');
const check = process.argv.includes('--check');

// The libraries bundled into app.js (their licenses go into licenses.txt).
const BUNDLED = ['cytoscape', '@dagrejs/dagre', '@dagrejs/graphlib', 'uplot'];

const result = await esbuild.build({
  entryPoints: { app: join(here, 'src', 'main.js') },
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  outdir: 'out',
  write: false,
  legalComments: 'none',
  sourcemap: false,
  metafile: true,
  logLevel: 'warning',
});

function licenses() {
  let text = 'Third-party software bundled into app.js and app.css by the onemesh dashboard build.\n';
  for (const name of BUNDLED) {
    const dir = join(here, 'node_modules', name);
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    const file = readdirSync(dir).find((f) => /^licen[cs]e/i.test(f));
    text += `\n==== ${name} ${pkg.version} (${pkg.license}) ====\n`;
    text += file ? readFileSync(join(dir, file), 'utf8').trim() + '\n' : `${pkg.license} license; see ${pkg.homepage || name}\n`;
  }
  return text;
}

const files = new Map();
for (const f of result.outputFiles) {
  const name = f.path.endsWith('.css') ? 'app.css' : 'app.js';
  files.set(name, Buffer.from(f.contents));
}
files.set('index.html', readFileSync(join(here, 'src', 'index.html')));
files.set('licenses.txt', Buffer.from(licenses()));

if (check) {
  const stale = [];
  for (const [name, data] of files) {
    const path = join(out, name);
    if (!existsSync(path) || !readFileSync(path).equals(data)) stale.push(name);
  }
  if (stale.length) {
    console.error(`crates/control/dashboard is stale (${stale.join(', ')}): run \`npm ci && npm run build\` in dashboard/ and commit the output.`);
    process.exit(1);
  }
  console.log('crates/control/dashboard is up to date');
} else {
  mkdirSync(out, { recursive: true });
  for (const [name, data] of files) writeFileSync(join(out, name), data);
}
for (const [name, data] of files) console.log(`${name.padEnd(12)} ${String(data.length).padStart(8)} bytes`);
