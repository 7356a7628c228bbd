// Test harness: starts the REAL processes — `cloud-hub serve` (HTTP auth required, the sample
// county model, the shipped governance with illegal parking registering after 10 s as in
// scripts/demo.sh, free ports, a fresh data dir, tokens issued with `cloud-hub token add`) and an
// `edge-agent` on the street footage — and Debian's Chromium through playwright-core, with a
// route guard (nothing may leave 127.0.0.1) and console / page error capture.
import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, existsSync, cpSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import net from 'node:net'
import http from 'node:http'
import { startStaticProxy } from './static-proxy.mjs'

export const WEB = resolve(dirname(fileURLToPath(import.meta.url)), '..')
export const REPO = resolve(WEB, '../..')
export const BIN = process.env.CSB_BIN_DIR ?? join(REPO, 'target/release')
export const HUB_BIN = process.env.CSB_HUB_BIN ?? join(BIN, 'cloud-hub')
export const AGENT_BIN = process.env.CSB_AGENT_BIN ?? join(BIN, 'edge-agent')
export const ARTIFACTS = process.env.CSB_ARTIFACTS ?? join(WEB, 'test-artifacts')
export const CHROMIUM = process.env.CSB_CHROMIUM ?? '/usr/bin/chromium'

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

export function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer()
    s.unref()
    s.on('error', rej)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => res(port))
    })
  })
}

function waitForLine(proc, re, ms, what) {
  return new Promise((res, rej) => {
    let buf = ''
    const timer = setTimeout(() => rej(new Error(`${what}: no "${re}" within ${ms} ms; output:\n${buf.slice(-3000)}`)), ms)
    const on = (d) => {
      buf += d.toString()
      const m = re.exec(buf)
      if (m) {
        clearTimeout(timer)
        res(m)
      }
    }
    proc.stdout?.on('data', on)
    proc.on('exit', (code) => {
      clearTimeout(timer)
      rej(new Error(`${what} exited (${code}) before ready:\n${buf.slice(-3000)}`))
    })
  })
}

function stopProc(p, signal = 'SIGTERM', ms = 8000) {
  return new Promise((res) => {
    if (!p || p.exitCode !== null || p.signalCode !== null) return res()
    const timer = setTimeout(() => {
      try {
        p.kill('SIGKILL')
      } catch {
        /* gone */
      }
    }, ms)
    p.once('exit', () => {
      clearTimeout(timer)
      res()
    })
    try {
      p.kill(signal)
    } catch {
      clearTimeout(timer)
      res()
    }
  })
}

/** JSON over HTTP with a bearer token (the API as other clients use it). */
export async function apiJson(base, path, token, init = {}) {
  const res = await fetch(base + path, {
    ...init,
    headers: { Accept: 'application/json', ...(init.body ? { 'Content-Type': 'application/json' } : {}), ...(token ? { Authorization: `Bearer ${token}` } : {}), ...(init.headers ?? {}) },
  })
  const text = await res.text()
  let body
  try {
    body = JSON.parse(text)
  } catch {
    body = text
  }
  if (!res.ok) throw new Error(`${init.method ?? 'GET'} ${path} → ${res.status}: ${text.slice(0, 300)}`)
  return body
}

/**
 * The hub + agent stack for the whole suite.
 * @param {{agent?: boolean}} opts
 */
let stackNote = ''
export async function startStack(opts = { agent: true }) {
  const countyDir = opts.county ?? join(REPO, 'configs/county')
  const httpAuth = opts.httpAuth ?? 'required'
  if (!existsSync(HUB_BIN)) throw new Error(`no hub binary at ${HUB_BIN} (build it, or set CSB_BIN_DIR / CSB_HUB_BIN)`)
  const root = mkdtempSync(join(tmpdir(), 'csb-web-test-'))
  const dataDir = join(root, 'hub')
  mkdirSync(dataDir)
  const logs = join(root, 'logs')
  mkdirSync(logs)
  // Governance: the shipped defaults, illegal parking registering after 10 s (as demo.sh).
  const gov = join(root, 'governance')
  cpSync(join(REPO, 'configs/governance'), gov, { recursive: true })
  const catsPath = join(gov, 'categories.toml')
  const lines = readFileSync(catsPath, 'utf8').split('\n')
  let inParking = false
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] === 'id = "illegal-parking"') inParking = true
    else if (inParking && lines[i].startsWith('min_duration_s')) {
      lines[i] = 'min_duration_s = 10'
      inParking = false
    }
  }
  writeFileSync(catsPath, lines.join('\n'))
  writeFileSync(join(root, 'hub.toml'), `governance_dir = "${gov}"\n[auth]\nhttp = "${httpAuth}"\n`)

  const tokens = {}
  for (const [name, role, dept] of [
    ['t-operator', 'operator'],
    ['t-viewer', 'viewer'],
    ['t-police', 'handler', 'traffic-police'],
    ['t-admin', 'admin'],
  ]) {
    const out = join(root, name + '.token')
    execFileSync(HUB_BIN, ['token', 'add', name, '--role', role, ...(dept ? ['--department', dept] : []), '--data-dir', dataDir, '--token-out', out], {
      stdio: ['ignore', 'ignore', 'inherit'],
    })
    tokens[role] = readFileSync(out, 'utf8').trim()
  }

  // The demo gateway's credentials: it signs its evidence uploads with them (MQTT device auth
  // stays off, as the hub's default).
  const secret = join(root, 'device.secret')
  execFileSync(HUB_BIN, ['device', 'add', 'yuexi/gw-demo-01', '--data-dir', dataDir, '--secret-out', secret], { stdio: ['ignore', 'ignore', 'inherit'] })

  const httpPort = await freePort()
  const mqttPort = await freePort()
  const hubUrl = `http://127.0.0.1:${httpPort}`
  let hub = null
  const startHub = async () => {
    hub = spawn(
      HUB_BIN,
      ['serve', '--config', join(root, 'hub.toml'), '--mqtt-addr', `127.0.0.1:${mqttPort}`, '--http-addr', `127.0.0.1:${httpPort}`, '--data-dir', dataDir, '--county', countyDir],
      { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } },
    )
    hub.stderr.on('data', () => {})
    await waitForLine(hub, /cloud-hub ready/, 20_000, 'cloud-hub')
  }
  await startHub()

  // The page: the hub serves it when it was built with web/dist; otherwise a small static
  // server for dist/ that forwards the API to the hub (same origin for the page either way).
  let pageUrl = hubUrl
  let proxy = null
  // The hub's own copy is used when it is the page in dist/ (a hub built after `npm run build`);
  // a hub without it, or with an older one, gets dist/ served beside it.
  const index = await fetch(hubUrl + '/').then((r) => (r.ok ? r.text() : ''), () => '')
  const distIndex = existsSync(join(WEB, 'dist/index.html')) ? readFileSync(join(WEB, 'dist/index.html'), 'utf8') : null
  const embedded = /\/assets\/index-[\w-]+\.js/.test(index)
  const stale = !embedded || (distIndex !== null && distIndex !== index)
  // `make test` builds the page, then the hub that embeds it: the hub's own copy must be it.
  if (process.env.CSB_WEB_EMBEDDED && stale) {
    throw new Error('CSB_WEB_EMBEDDED: the hub does not serve the page in dist/ (rebuild cloud-hub after `npm run build`)')
  }
  if (stale || process.env.CSB_WEB_FROM_DIST) {
    if (!existsSync(join(WEB, 'dist/index.html'))) throw new Error('no dist/: run `npm run build` first')
    proxy = await startStaticProxy(join(WEB, 'dist'), hubUrl)
    pageUrl = proxy.url
  }
  stackNote = pageUrl === hubUrl ? 'page served by the hub' : 'page served from dist/ beside the hub (API forwarded)'

  let agent = null
  let stopping = false
  if (opts.agent) {
    if (!existsSync(AGENT_BIN)) throw new Error(`no edge-agent binary at ${AGENT_BIN}`)
    let cfg = readFileSync(join(REPO, 'configs/demo.toml'), 'utf8')
    cfg = cfg
      .replace(/^broker = .*$/m, `broker = "127.0.0.1:${mqttPort}"\nusername = "yuexi/gw-demo-01"\nsecret_file = "${secret}"`)
      .replace(/^url = .*$/m, `url = "${hubUrl}"`)
      .replace(/^dir = .*$/m, `dir = "${join(root, 'outbox')}"`)
      .replace(/^uri = .*$/m, `uri = "${join(REPO, '.cache/media/vtest.avi')}"`)
    writeFileSync(join(root, 'agent.toml'), cfg)
    agent = spawn(AGENT_BIN, ['run', '--config', join(root, 'agent.toml')], {
      cwd: REPO,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: {
        ...process.env,
        ORT_DYLIB_PATH: process.env.ORT_DYLIB_PATH ?? join(REPO, '.cache/onnxruntime/libonnxruntime.so'),
        CSB_MODELS_DIR: process.env.CSB_MODELS_DIR ?? join(REPO, 'models'),
        CSB_HEALTH_INTERVAL_MS: '2000',
        RUST_LOG: 'warn',
      },
    })
    let agentErr = ''
    agent.stderr.on('data', (d) => {
      agentErr = (agentErr + d.toString()).slice(-4000)
    })
    agent.on('exit', (code, sig) => {
      if (!stopping) console.error(`edge-agent exited (${code ?? sig}):\n${agentErr}`)
    })
  }

  const stack = {
    note: stackNote,
    root,
    dataDir,
    hubUrl,
    pageUrl,
    tokens,
    api: (path, role = 'admin', init) => apiJson(hubUrl, path, tokens[role], init),
    /** Stops the hub the hard way (a crash, a power cut). */
    async killHub() {
      await stopProc(hub, 'SIGKILL')
    },
    /** Starts it again on the same ports and data dir. */
    async restartHub() {
      await startHub()
    },
    async stop() {
      stopping = true
      await stopProc(agent)
      await stopProc(hub)
      await proxy?.close()
      if (!process.env.CSB_KEEP_TMP) rmSync(root, { recursive: true, force: true })
    },
  }
  return stack
}

/** Waits until `f()` returns a truthy value (polling), or throws after `ms`. */
export async function until(f, ms, what, every = 250) {
  const end = Date.now() + ms
  let last
  while (Date.now() < end) {
    try {
      last = await f()
      if (last) return last
    } catch (e) {
      last = e
    }
    await sleep(every)
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last instanceof Error ? ': ' + last.message : ''}`)
}

// ---------------------------------------------------------------------------------------------
// The browser

export async function launchBrowser() {
  const { chromium } = await import('playwright-core')
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install -y chromium)`)
  // `launch` starts Chromium on a fresh temporary user-data dir of its own (removed on close);
  // every signed-in user gets an isolated context of its own (`newContext`).
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
      '--disable-dev-shm-usage',
    ],
  })
  return browser
}

const LOCAL = new Set(['127.0.0.1', 'localhost', '[::1]'])
/**
 * A fresh context with the guard: every request not to 127.0.0.1/localhost/data:/blob: is
 * aborted and recorded; service workers blocked; console errors and page errors recorded.
 */
export async function guardedPage(browser, { width = 1920, height = 1080, locale = 'zh-CN' } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, serviceWorkers: 'block', locale, timezoneId: 'Asia/Shanghai' })
  const offHost = []
  const consoleErrors = []
  const pageErrors = []
  await context.route('**/*', (route) => {
    const u = route.request().url()
    let ok = u.startsWith('data:') || u.startsWith('blob:')
    if (!ok) {
      try {
        const url = new URL(u)
        ok = (url.protocol === 'http:' || url.protocol === 'https:' || url.protocol === 'ws:') && LOCAL.has(url.hostname)
      } catch {
        ok = false
      }
    }
    if (ok) return route.continue()
    offHost.push(u)
    return route.abort('blockedbyclient')
  })
  const page = await context.newPage()
  // Errors the suite expects at a given moment (connection refused while the hub is down) are
  // allowed by `allow` predicates.
  const allow = []
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return
    const e = { text: msg.text(), url: msg.location()?.url ?? '' }
    if (allow.some((f) => f(e))) return
    consoleErrors.push(e)
  })
  page.on('pageerror', (err) => pageErrors.push(String(err?.stack ?? err)))
  return { context, page, offHost, consoleErrors, pageErrors, allow }
}

/** Signs in through the page's form. */
export async function signIn(g, pageUrl, token, path = '/') {
  await g.page.goto(pageUrl + path)
  await g.page.waitForSelector('[data-testid="signin"]', { timeout: 15_000 })
  await g.page.fill('[data-testid="token"]', token)
  await g.page.click('[data-testid="signin-submit"]')
  await g.page.waitForSelector('.hdr', { timeout: 15_000 })
}

export function assertClean(assert, g, what) {
  assert.deepEqual(g.offHost, [], `${what}: requests that left 127.0.0.1`)
  assert.deepEqual(g.pageErrors, [], `${what}: page errors`)
  assert.deepEqual(g.consoleErrors, [], `${what}: console errors`)
}

export function artifactsDir() {
  mkdirSync(ARTIFACTS, { recursive: true })
  return ARTIFACTS
}

export function listArtifacts() {
  return existsSync(ARTIFACTS) ? readdirSync(ARTIFACTS) : []
}

export { http }
