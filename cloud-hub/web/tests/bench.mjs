// Page benchmark (issue 17, Done-when 3; not a timed test): a real hub with a county model of
// 5,000 synthetic devices (plus the sample's 25) and 1,000 open cases; the cockpit and the twin
// map in Debian's Chromium. Reports the time until every panel is drawn, the longest main-thread
// task during 60 s of 1 Hz device updates (500 status changes a second, through the page's own
// `devices` delta path), the JS heap growth over BENCH_MINUTES (default 10) of updates, and the
// bundle size (gzip -9, without the font).
//
//   node tests/bench.mjs            (after npm run build; binaries from $CSB_BIN_DIR)
//   BENCH_MINUTES=2 node tests/bench.mjs
import { mkdtempSync, cpSync, readFileSync, writeFileSync, readdirSync, appendFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { gzipSync } from 'node:zlib'
import { startStack, launchBrowser, guardedPage, signIn, until, sleep, artifactsDir, REPO, WEB } from './harness.mjs'

const DEVICES = Number(process.env.BENCH_DEVICES ?? 5000)
const CASES = Number(process.env.BENCH_CASES ?? 1000)
const MINUTES = Number(process.env.BENCH_MINUTES ?? 10)

// ---- a county model with synthetic devices ----
const county = mkdtempSync(join(tmpdir(), 'csb-bench-county-'))
cpSync(join(REPO, 'configs/county'), county, { recursive: true })
const ct = readFileSync(join(county, 'county.toml'), 'utf8').replace(/^outline = "(.*)"$/m, (_, p) => `outline = "${resolve(REPO, 'configs/county', p)}"`)
writeFileSync(join(county, 'county.toml'), ct)
const towns = JSON.parse(readFileSync(join(county, 'towns.geojson'), 'utf8')).features.map((f) => {
  const ring = f.geometry.coordinates[0]
  const xs = ring.map((p) => p[0])
  const ys = ring.map((p) => p[1])
  const cx = xs.reduce((a, b) => a + b) / xs.length
  const cy = ys.reduce((a, b) => a + b) / ys.length
  return { id: f.properties.id, cx, cy, rx: (Math.max(...xs) - Math.min(...xs)) / 4, ry: (Math.max(...ys) - Math.min(...ys)) / 4 }
})
const depts = ['city-ops', 'urban-mgmt', 'traffic-police', 'water', 'housing', 'ecology', 'emergency']
let seed = 42
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648)
const place = (t) => [+(t.cx + (rnd() * 2 - 1) * t.rx).toFixed(6), +(t.cy + (rnd() * 2 - 1) * t.ry).toFixed(6)]
let toml = '\n# ---- benchmark devices (generated) ----\n'
const perGw = 50
for (let g = 0; g * perGw < DEVICES; g++) {
  const t = towns[g % towns.length]
  const gw = `bench/gw-${String(g).padStart(3, '0')}`
  const at = place(t)
  toml += `\n[[gateways]]\nid = "${gw}"\nname = "基准网关 ${g}"\nmodel = "bench"\ntown = "${t.id}"\ndepartment = "city-ops"\ninstalled = "2026-01-01"\nlocation = [${at[0]}, ${at[1]}]\n`
  for (let i = 1; i < perGw; i++) {
    const p = place(t)
    const dept = depts[(g + i) % depts.length]
    if (i % 5 === 0)
      toml += `\n[[sensors]]\nid = "${gw}/s-${i}"\nname = "基准传感器 ${g}-${i}"\nkind = "water_level"\nmodel = "bench"\ntown = "${t.id}"\ndepartment = "${dept}"\ninstalled = "2026-01-01"\nlocation = [${p[0]}, ${p[1]}]\nmetrics = ["water_level_cm"]\n`
    else
      toml += `\n[[cameras]]\nid = "${gw}/cam-${i}"\nname = "基准摄像机 ${g}-${i}"\nmodel = "bench"\ntown = "${t.id}"\ndepartment = "${dept}"\ninstalled = "2026-01-01"\nlocation = [${p[0]}, ${p[1]}]\n`
  }
}
appendFileSync(join(county, 'devices.toml'), toml)

const stack = await startStack({ agent: false, county })
const browser = await launchBrowser()
const out = { devices: 0, cases: 0 }
try {
  // ---- 1,000 open cases, spread over the county ----
  const cats = ['exposed-garbage', 'piled-materials', 'street-hanging', 'bin-overflow', 'illegal-parking']
  let made = 0
  const one = async (i) => {
    const t = towns[i % towns.length]
    await stack.api('/api/v1/cases', 'operator', {
      method: 'POST',
      body: JSON.stringify({ category: cats[i % cats.length], place: { town: t.id, point: place(t) }, note: `bench ${i}`, source: 'inspector' }),
    })
    made++
  }
  for (let i = 0; i < CASES; i += 16) await Promise.all(Array.from({ length: Math.min(16, CASES - i) }, (_, k) => one(i + k)))
  out.cases = made
  const inv = await stack.api('/api/v1/inventory', 'operator')
  out.devices = inv.summary.devices

  const g = await guardedPage(browser)
  await signIn(g, stack.pageUrl, stack.tokens.operator)
  await g.page.evaluate(() => localStorage.setItem('csb.bench', '1'))
  const cdp = await g.context.newCDPSession(g.page)

  const drawn = async (path, chart) => {
    await g.page.goto(stack.pageUrl + path)
    return until(
      () =>
        g.page.evaluate(
          ({ chart, nDev, nCases }) => {
            const o = window.__csb?.option(chart)
            if (!o) return null
            const n = (p) => o.series.filter((s) => s.id?.startsWith(p) && s.id !== 'dev-towns').reduce((a, s) => a + s.data.length, 0)
            // At county zoom devices are counted in their towns' bubbles.
            const towns = o.series.find((s) => s.id === 'dev-towns')?.data.reduce((a, d) => a + d.value[2], 0) ?? 0
            if (n('dev-') + towns < nDev || n('case-') < nCases) return null
            const blank = [...document.querySelectorAll('[data-panel]')].some((p) => !p.querySelector('canvas') && !(p.textContent ?? '').trim())
            if (blank) return null
            const nav = performance.getEntriesByType('navigation')[0]
            return Math.round(performance.now() - (nav?.startTime ?? 0))
          },
          { chart, nDev: Math.min(DEVICES, 4000), nCases: Math.min(CASES, 900) },
        ),
      30_000,
      `${path} drawn`,
      50,
    )
  }
  // Long tasks (> 50 ms) of the page now loaded, gathered in window.__lt.
  const observeLongTasks = () =>
    g.page.evaluate(() => {
      window.__lt = []
      new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__lt.push(e.duration))).observe({ type: 'longtask' })
    })
  // 500 random device status changes, as the live stream would bring them.
  const tick = () =>
    g.page.evaluate(() => {
      const ids = window.__csbBench.ids()
      const changes = []
      for (let i = 0; i < 500; i++) {
        const id = ids[Math.floor(Math.random() * ids.length)]
        changes.push({ entity: `urn:ngsi-ld:Camera:${id.replace(/\//g, ':')}`, type: 'Camera', attrs: { status: Math.random() < 0.8 ? 'online' : 'offline' } })
      }
      window.__csbBench.devices(changes)
    })
  out.cockpit_drawn_ms = await drawn('/', 'ck-map')
  out.map_drawn_ms = await drawn('/map', 'map')

  // ---- 60 s of 1 Hz updates on the twin map zoomed in, where every device is its own point ----
  await g.page.click('[data-testid="view-seat"]')
  await until(
    () =>
      g.page.evaluate((nDev) => {
        const o = window.__csb?.option('map')
        const n = o?.series.filter((s) => s.id?.startsWith('dev-') && s.id !== 'dev-towns').reduce((a, s) => a + s.data.length, 0) ?? 0
        return n >= nDev || null
      }, Math.min(DEVICES, 4000)),
    30_000,
    'every device drawn on the zoomed-in map',
  )
  await observeLongTasks()
  for (let s = 0; s < 60; s++) {
    await tick()
    await sleep(1000)
  }
  const ltMap = await g.page.evaluate(() => window.__lt)
  out.map_points_longtasks_over_50ms_in_60s = ltMap.length
  out.map_points_longest_task_ms = ltMap.length ? Math.round(Math.max(...ltMap)) : '< 50 (none reported)'
  await drawn('/', 'ck-map')

  // ---- 60 s of 1 Hz updates on the cockpit: the longest main-thread task (and the warm-up
  // before the heap is measured on the same page) ----
  await observeLongTasks()
  for (let s = 0; s < 60; s++) {
    await tick()
    await sleep(1000)
  }
  if (process.env.BENCH_PROFILE) {
    await cdp.send('Profiler.enable')
    await cdp.send('Profiler.start')
    for (let s = 0; s < 10; s++) {
      await tick()
      await sleep(1000)
    }
    const { profile } = await cdp.send('Profiler.stop')
    const self = new Map()
    const dt = profile.timeDeltas
    const byId = new Map(profile.nodes.map((n) => [n.id, n]))
    profile.samples.forEach((id, i) => {
      const n = byId.get(id)
      const k = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').pop()}:${n.callFrame.lineNumber}`
      self.set(k, (self.get(k) ?? 0) + (dt[i] ?? 0) / 1000)
    })
    console.log([...self].sort((a, b) => b[1] - a[1]).slice(0, 25).map(([k, v]) => `${v.toFixed(0).padStart(6)} ms  ${k}`).join('\n'))
  }
  const lt = await g.page.evaluate(() => window.__lt)
  out.longtasks_over_50ms_in_60s = lt.length
  out.longest_task_ms = lt.length ? Math.round(Math.max(...lt)) : '< 50 (none reported)'


  // ---- heap growth over MINUTES of updates ----
  const heap = async () => {
    await cdp.send('HeapProfiler.collectGarbage')
    await sleep(500)
    await cdp.send('HeapProfiler.collectGarbage')
    return (await cdp.send('Runtime.getHeapUsage')).usedSize
  }
  const h0 = await heap()
  // BENCH_HEAP_DIFF=1: which constructors grew over the minutes (heap snapshots at both ends).
  const census = async () => {
    if (!process.env.BENCH_HEAP_DIFF) return null
    let json = ''
    const onChunk = (c) => (json += c.chunk)
    cdp.on('HeapProfiler.addHeapSnapshotChunk', onChunk)
    await cdp.send('HeapProfiler.takeHeapSnapshot', { reportProgress: false })
    cdp.off('HeapProfiler.addHeapSnapshotChunk', onChunk)
    const snap = JSON.parse(json)
    const f = snap.snapshot.meta.node_fields
    const types = snap.snapshot.meta.node_types[0]
    const [iType, iName, iSize, n] = [f.indexOf('type'), f.indexOf('name'), f.indexOf('self_size'), f.length]
    const by = new Map()
    for (let i = 0; i < snap.nodes.length; i += n) {
      const k = `${types[snap.nodes[i + iType]]}:${snap.strings[snap.nodes[i + iName]].slice(0, 60)}`
      const e = by.get(k) ?? [0, 0]
      e[0]++
      e[1] += snap.nodes[i + iSize]
      by.set(k, e)
    }
    return by
  }
  const c0 = await census()
  const samples = [+(h0 / 1048576).toFixed(2)]
  for (let m = 0; m < MINUTES; m++) {
    for (let s = 0; s < 60; s++) {
      await tick()
      await sleep(1000)
    }
    samples.push(+((await heap()) / 1048576).toFixed(2))
  }
  const h1 = await heap()
  const c1 = await census()
  if (c0 && c1) {
    const grew = [...c1].map(([k, [n, b]]) => [k, n - (c0.get(k)?.[0] ?? 0), b - (c0.get(k)?.[1] ?? 0)]).sort((a, b) => b[2] - a[2]).slice(0, 25)
    console.log('heap growth by constructor (count, bytes):\n' + grew.map(([k, n, b]) => `${String(b).padStart(9)} B ${String(n).padStart(7)}  ${k}`).join('\n'))
  }
  out.heap_mb_each_minute = samples
  out.heap_minutes = MINUTES
  out.heap_start_mb = +(h0 / 1048576).toFixed(1)
  out.heap_end_mb = +(h1 / 1048576).toFixed(1)
  out.heap_growth_pct = +(((h1 - h0) / h0) * 100).toFixed(1)
  await g.context.close()
} finally {
  await browser.close()
  await stack.stop()
}

// ---- bundle size (scripts and styles, gzip -9, fonts excluded) ----
const assets = join(WEB, 'dist/assets')
let gz = 0
let raw = 0
for (const f of readdirSync(assets).filter((f) => /\.(js|css)$/.test(f))) {
  const b = readFileSync(join(assets, f))
  raw += b.length
  gz += gzipSync(b, { level: 9 }).length
}
out.bundle_kb = Math.round(raw / 1024)
out.bundle_gz_kb = Math.round(gz / 1024)
out.goals = { drawn_ms: 2000, longest_task_ms: 100, map_points_longest_task_ms: 100, heap_growth_pct: 10, bundle_gz_kb: 600 }
writeFileSync(join(artifactsDir(), 'bench.json'), JSON.stringify(out, null, 2))
console.log(JSON.stringify(out, null, 2))
